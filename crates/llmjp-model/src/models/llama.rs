//! Llama (llm-jp-3.1 1.8b / 13b): a dense SwiGLU MLP in every layer, named as in the
//! checkpoint (`model.layers.N.mlp.{gate,up,down}_proj.weight`).

use burn::tensor::backend::Backend;
use llmjp_weights::ModelConfig;

use crate::layers::FeedForward;
use crate::linear::Loader;
use crate::ops::DecoderOps;
use crate::params::Mlp;
use crate::Result;

/// Layer `layer`'s MLP.
pub(super) fn feed_forward<B: Backend>(
    ops: &dyn DecoderOps<B>,
    loader: &Loader<'_, B>,
    config: &ModelConfig,
    layer: usize,
) -> Result<Box<dyn FeedForward<B>>> {
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let linear = |name: &str, out, inputs| {
        ops.load_linear(
            loader,
            &format!("model.layers.{layer}.mlp.{name}.weight"),
            out,
            inputs,
        )
    };
    Ok(Box::new(Mlp {
        gate: linear("gate_proj", inter, hidden)?,
        up: linear("up_proj", inter, hidden)?,
        down: linear("down_proj", hidden, inter)?,
    }))
}
