//! The op layer: the operations the decoder is written in, implemented per backend.
//!
//! A forward pass runs on *packed rows*: the tokens of every sequence in the batch one after
//! another, `[rows, hidden]`. Every op but attention (and RoPE, which needs positions) treats
//! rows alike; those two get the batch's [`SeqSpan`]s: which rows belong to which sequence
//! and at which position its first row stands.
//!
//! - [`Reference`]: burn tensor ops, on every backend; as transformers computes (the f32
//!   parity tests run it).
//! - [`CpuKernels`]: burn-flex; the kernels of [`crate::kernels`] on the tensors' host
//!   storage (no copies): bf16 weights in place, f32 activations, an f32 host KV cache.
//!
//! An implementation overrides what it has kernels for and calls [`Reference`] for the rest
//! (passing itself where an op runs others, as [`moe::dispatch`] does).

pub(crate) mod cpu;
pub mod moe;
pub(crate) mod reference;

use std::fmt;
use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use cpu::CpuKernels;
pub use reference::Reference;

use crate::cache::{KvMemory, LayerCache};
use crate::layers::{Mlp, RmsNorm, Rope};
use crate::linear::{Linear, Loader};
use crate::{ComputeDtype, Result};

/// The rows of one sequence in a packed batch, and the position of its first row (the
/// number of positions already in its cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSpan {
    /// The sequence's rows in the packed batch.
    pub rows: Range<usize>,
    /// Position of its first row (the cached length).
    pub start: usize,
}

impl SeqSpan {
    /// Rows of the sequence in this pass.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the sequence has no rows in this pass.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The position of every row.
    pub fn positions(&self) -> Range<usize> {
        self.start..self.start + self.len()
    }
}

/// One sequence of a batch at one layer: its rows and that layer's cache.
#[derive(Debug)]
pub struct LayerSeq<'a, B: Backend> {
    /// The sequence's rows and first position.
    pub span: SeqSpan,
    /// This layer's keys and values of the sequence.
    pub cache: &'a mut LayerCache<B>,
}

/// The head layout of attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer with grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// [`DecoderOps::kv_block_positions`] of ops that do not say otherwise.
pub const DEFAULT_KV_BLOCK_POSITIONS: usize = 32;

/// The operations a decoder runs, implemented per backend (see the module docs). Tensors
/// are packed rows, `[rows, features]`.
pub trait DecoderOps<B: Backend>: fmt::Debug + Send + Sync {
    /// A short name, shown in messages and used to match caches to models.
    fn name(&self) -> &'static str;

    /// The dtype activations and the KV cache are kept in when weights are in `weights`.
    fn activation_dtype(&self, weights: ComputeDtype) -> ComputeDtype;

    /// Positions in the KV cache's unit of growth and sharing (a page): what a prefix
    /// cache should share in whole blocks of, and budget in. 32 unless the ops' cache
    /// layout says otherwise.
    fn kv_block_positions(&self) -> usize {
        DEFAULT_KV_BLOCK_POSITIONS
    }

    /// Loads a linear layer's `[out, in]` weight (also the embedding table) in the format
    /// these ops run.
    fn load_linear(
        &self,
        loader: &Loader<'_, B>,
        name: &str,
        out: usize,
        inputs: usize,
    ) -> Result<Linear<B>>;

    /// Loads the `[vocab, hidden]` embedding table (which a tied head shares).
    fn load_embedding(
        &self,
        loader: &Loader<'_, B>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<B>>;

    /// An empty cache of one layer for one sequence, its memory counted in `memory`.
    fn new_layer_cache(
        &self,
        heads: Heads,
        capacity: usize,
        dtype: ComputeDtype,
        device: &B::Device,
        memory: &KvMemory,
    ) -> LayerCache<B>;

    /// The embedding rows of `ids`, in `dtype`.
    fn embed(
        &self,
        table: &Linear<B>,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>>;

    /// RMSNorm of every row: normalised in f32, cast back, then scaled (as transformers).
    fn rms_norm(&self, x: Tensor<B, 2>, norm: &RmsNorm<B>) -> Result<Tensor<B, 2>>;

    /// `x @ w.T`, whatever the weight's format.
    fn linear(&self, x: Tensor<B, 2>, weight: &Linear<B>) -> Result<Tensor<B, 2>>;

    /// Rotates `x` (`[rows, heads * head_dim]`) by each row's position (rotate-half).
    fn rope(
        &self,
        x: Tensor<B, 2>,
        heads: usize,
        rope: &Rope<B>,
        batch: &[SeqSpan],
    ) -> Result<Tensor<B, 2>>;

    /// Writes each sequence's new keys and values (`k`, `v`: `[rows, kv_heads * head_dim]`,
    /// already rotated) into its cache, then returns causal attention of `q` over each
    /// sequence's cached positions, `[rows, heads * head_dim]`.
    fn attention(
        &self,
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        heads: Heads,
        batch: &mut [LayerSeq<'_, B>],
    ) -> Result<Tensor<B, 2>>;

    /// SwiGLU's activation: `silu(gate) * up`.
    fn swiglu(&self, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Result<Tensor<B, 2>>;

    /// A sparse mixture of experts: routing (f32 softmax → top-k → renormalise) and each
    /// row through its chosen experts, their outputs weighted in f32 and summed.
    fn moe(
        &self,
        x: Tensor<B, 2>,
        router: &Linear<B>,
        experts: &[Mlp<B>],
        top_k: usize,
    ) -> Result<Tensor<B, 2>>;

    /// The LM head: f32 logits `[rows, vocab]`.
    fn lm_head(&self, x: Tensor<B, 2>, head: &Linear<B>) -> Result<Tensor<B, 2>>;
}
