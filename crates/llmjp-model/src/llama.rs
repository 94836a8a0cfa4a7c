//! Llama (llm-jp-3.1 1.8b / 13b): the dense SwiGLU feed-forward, named as in the checkpoint
//! (`model.layers.N.mlp.{gate,up,down}_proj.weight`).

use burn::tensor::backend::Backend;
use llmjp_weights::ModelConfig;

use crate::layers::{Loader, Mlp};
use crate::Result;

/// Loads layer `layer`'s MLP.
pub(crate) fn load_mlp<B: Backend>(
    loader: &Loader<'_, B>,
    config: &ModelConfig,
    layer: usize,
) -> Result<Mlp<B>> {
    let prefix = format!("model.layers.{layer}.mlp");
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    Ok(Mlp {
        gate: loader.linear(&format!("{prefix}.gate_proj.weight"), hidden, inter)?,
        up: loader.linear(&format!("{prefix}.up_proj.weight"), hidden, inter)?,
        down: loader.linear(&format!("{prefix}.down_proj.weight"), inter, hidden)?,
    })
}
