//! The op layer: the operations the decoder is written in, implemented per backend.
//!
//! A forward pass runs on *packed rows*: the tokens of every sequence in the batch one after
//! another, `[rows, hidden]`. Every op but attention (and RoPE, which needs positions) treats
//! rows alike; those two get the batch's [`SeqSpan`]s: which rows belong to which sequence
//! and at which position its first row stands.
//!
//! Every method of [`DecoderOps`] but its name has a default: the reference, burn tensor
//! ops on every backend, as transformers computes (the f32 parity tests run it). A backend's
//! ops override what they have kernels for, as candle's `CustomOp` does:
//!
//! - [`Reference`]: the defaults only;
//! - [`CpuKernels`](crate::cpu::CpuKernels): burn-flex, the CPU kernels on the tensors'
//!   host storage;
//! - `CubeKernels` (with the `cuda` or `vulkan` feature): cubecl kernels.

mod batch;
mod moe;
pub(crate) mod reference;

use std::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use batch::{Heads, LayerSeq, SeqSpan};

use crate::cache::LayerCache;
use crate::kv_memory::KvMemory;
use crate::linear::{Linear, Loader};
use crate::params::{Mlp, RmsNorm, Rope};
use crate::{read_f32, ComputeDtype, Result};

/// [`DecoderOps::kv_block_positions`] of ops that do not say otherwise.
pub const DEFAULT_KV_BLOCK_POSITIONS: usize = 32;

/// The operations a decoder runs, implemented per backend (see the module docs). Tensors
/// are packed rows, `[rows, features]`. Every method but [`name`](Self::name) defaults to
/// the reference; an implementation overrides what it has kernels for.
pub trait DecoderOps<B: Backend>: fmt::Debug + Send + Sync {
    /// A short name, shown in messages and used to match caches to models.
    fn name(&self) -> &'static str;

    /// The dtype activations and the KV cache are kept in when weights are in `weights`
    /// (by default the weights' own).
    fn activation_dtype(&self, weights: ComputeDtype) -> ComputeDtype {
        weights
    }

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
    ) -> Result<Linear<B>> {
        reference::load_weight(loader, name, out, inputs)
    }

    /// Loads the `[vocab, hidden]` embedding table (which a tied head shares).
    fn load_embedding(
        &self,
        loader: &Loader<'_, B>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<B>> {
        reference::load_weight(loader, name, vocab, hidden)
    }

    /// An empty cache of one layer for one sequence, its memory counted in `memory`.
    fn new_layer_cache(
        &self,
        heads: Heads,
        capacity: usize,
        dtype: ComputeDtype,
        device: &B::Device,
        memory: &KvMemory,
    ) -> LayerCache<B> {
        let shape = [1, heads.kv_heads, capacity, heads.head_dim];
        LayerCache::zeros(shape, dtype, device, memory)
    }

    /// The embedding rows of `ids`, in `dtype`.
    fn embed(
        &self,
        table: &Linear<B>,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        table.rows(ids, dtype, device)
    }

    /// RMSNorm of every row: normalised in f32, cast back, then scaled (as transformers).
    fn rms_norm(&self, x: Tensor<B, 2>, norm: &RmsNorm<B>) -> Result<Tensor<B, 2>> {
        Ok(reference::rms_norm(x, norm))
    }

    /// `x @ w.T`, whatever the weight's format.
    fn linear(&self, x: Tensor<B, 2>, weight: &Linear<B>) -> Result<Tensor<B, 2>> {
        weight.forward(x)
    }

    /// Rotates `x` (`[rows, heads * head_dim]`) by each row's position (rotate-half).
    fn rope(
        &self,
        x: Tensor<B, 2>,
        heads: usize,
        rope: &Rope<B>,
        batch: &[SeqSpan],
    ) -> Result<Tensor<B, 2>> {
        Ok(reference::rope(x, heads, rope, batch))
    }

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
    ) -> Result<Tensor<B, 2>> {
        reference::attention(q, k, v, heads, batch)
    }

    /// SwiGLU's activation: `silu(gate) * up`.
    fn swiglu(&self, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        Ok(reference::swiglu(gate, up))
    }

    /// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`, by [`linear`](Self::linear) and
    /// [`swiglu`](Self::swiglu).
    fn mlp(&self, x: Tensor<B, 2>, mlp: &Mlp<B>) -> Result<Tensor<B, 2>> {
        let gate = self.linear(x.clone(), &mlp.gate)?;
        let up = self.linear(x, &mlp.up)?;
        self.linear(self.swiglu(gate, up)?, &mlp.down)
    }

    /// A sparse mixture of experts: routing (f32 softmax → top-k → renormalise) and each
    /// row through its chosen experts, their outputs weighted in f32 and summed.
    fn moe(
        &self,
        x: Tensor<B, 2>,
        router: &Linear<B>,
        experts: &[Mlp<B>],
        top_k: usize,
    ) -> Result<Tensor<B, 2>> {
        sparse_moe(self, x, router, experts, top_k)
    }

    /// The LM head: f32 logits `[rows, vocab]`.
    fn lm_head(&self, x: Tensor<B, 2>, head: &Linear<B>) -> Result<Tensor<B, 2>> {
        reference::lm_head(x, head)
    }
}

/// The op layer written with burn's tensor ops: [`DecoderOps`]' defaults, on every backend,
/// weights and activations in the compute dtype, norms and softmaxes in f32 as transformers
/// computes them. The f32 parity tests run it; other ops are measured against it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl<B: Backend> DecoderOps<B> for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }
}

/// A sparse mixture of experts on any ops (the default [`DecoderOps::moe`]): router logits
/// read back (`[rows, experts]`, small), routed on the host (softmax, top-k, renormalised), then each expert runs
/// only its rows through `ops`' [`mlp`](DecoderOps::mlp), its outputs weighted in f32 and
/// added into theirs in expert order.
pub fn sparse_moe<B: Backend, O: DecoderOps<B> + ?Sized>(
    ops: &O,
    x: Tensor<B, 2>,
    router: &Linear<B>,
    experts: &[Mlp<B>],
    top_k: usize,
) -> Result<Tensor<B, 2>> {
    let logits = read_f32(ops.linear(x.clone(), router)?)?;
    moe::dispatch(x, &logits, experts, top_k, |expert, rows| {
        ops.mlp(rows, expert)
    })
}
