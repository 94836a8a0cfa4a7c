//! The architectures, one file each: what a decoder layer's feed-forward block is and what
//! the checkpoint calls its weights. Everything else (embedding, norms, attention, head) is
//! shared ([`crate::layers`], [`crate::model`]).

mod llama;
mod mixtral;

use burn::tensor::backend::Backend;
use llmjp_weights::{Architecture, ModelConfig};

use crate::layers::DecoderLayer;
use crate::linear::Loader;
use crate::ops::DecoderOps;
use crate::Result;

/// Loads decoder layer `layer` of the architecture `config` names.
pub(crate) fn load_layer<B: Backend>(
    ops: &dyn DecoderOps<B>,
    loader: &Loader<'_, B>,
    config: &ModelConfig,
    layer: usize,
) -> Result<DecoderLayer<B>> {
    let feed_forward = match config.architecture {
        Architecture::Llama => llama::feed_forward(ops, loader, config, layer)?,
        Architecture::Mixtral => mixtral::feed_forward(ops, loader, config, layer)?,
    };
    DecoderLayer::load(ops, loader, config, layer, feed_forward)
}
