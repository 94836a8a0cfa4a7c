//! Mixtral (llm-jp-3.1 8x13b): a sparse mixture of SwiGLU experts in every layer, named as
//! in the Hub checkpoints (`model.layers.N.block_sparse_moe.gate.weight` for the router,
//! `...block_sparse_moe.experts.E.w1|w2|w3.weight` for the experts).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use llmjp_weights::ModelConfig;

use crate::layers::FeedForward;
use crate::linear::{Linear, Loader};
use crate::ops::DecoderOps;
use crate::params::Mlp;
use crate::Result;

/// Router plus experts: each row runs only its `top_k` experts ([`DecoderOps::moe`]).
#[derive(Debug, Clone)]
struct SparseMoe<B: Backend> {
    router: Linear<B>,
    experts: Vec<Mlp<B>>,
    top_k: usize,
}

impl<B: Backend> FeedForward<B> for SparseMoe<B> {
    fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        ops.moe(x, &self.router, &self.experts, self.top_k)
    }
}

/// Layer `layer`'s router and experts.
pub(super) fn feed_forward<B: Backend>(
    ops: &dyn DecoderOps<B>,
    loader: &Loader<'_, B>,
    config: &ModelConfig,
    layer: usize,
) -> Result<Box<dyn FeedForward<B>>> {
    let prefix = format!("model.layers.{layer}.block_sparse_moe");
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let experts = (0..config.num_local_experts)
        .map(|e| {
            let linear = |w: &str, out, inputs| {
                ops.load_linear(
                    loader,
                    &format!("{prefix}.experts.{e}.{w}.weight"),
                    out,
                    inputs,
                )
            };
            Ok(Mlp {
                gate: linear("w1", inter, hidden)?,
                up: linear("w3", inter, hidden)?,
                down: linear("w2", hidden, inter)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let router = ops.load_linear(
        loader,
        &format!("{prefix}.gate.weight"),
        config.num_local_experts,
        hidden,
    )?;
    Ok(Box::new(SparseMoe {
        router,
        experts,
        top_k: config.num_experts_per_tok,
    }))
}
