//! [`CpuKernels`]: the op layer on burn-flex, run by the kernels of [`super::kernels`] on
//! the tensors' host storage.

use burn::tensor::Tensor;

use super::host::{host_tensor, rows_of, Cpu, HostRows};
use super::kernels::attention::PAGE;
use super::kernels::simd::silu_mul;
use super::kernels::Isa;
use super::kv::{attend_batch, HostKv};
use super::weight::{Bf16Weight, InterleavedKQuantWeight, InterleavedQuantWeight, QuantWeight};
use crate::cache::LayerCache;
use crate::kv_memory::KvMemory;
use crate::linear::{Linear, Loader, WeightRole};
use crate::matrix::{InterleavedKQuantMatrix, InterleavedQuantMatrix};
use crate::ops::{DecoderOps, Heads, LayerSeq, SeqSpan};
use crate::params::{RmsNorm, Rope};
use crate::{ComputeDtype, ModelError, Result};

type Device = burn_flex::FlexDevice;

/// The CPU's fast path on burn-flex: with weights in bf16, used in place from the mapped
/// checkpoint (f16/f32 checkpoints converted to bf16) and multiplied by AMX, AVX-512 or
/// AVX2 kernels on f32 activations; quantized weights (Q8_0 / Q4_0) by integer dot
/// products; other weight dtypes stay dense burn-flex tensors. RMSNorm,
/// RoPE, SwiGLU and attention over an f32 host KV cache run on the tensors' storage.
/// The instruction set is chosen once, when the ops are made.
#[derive(Debug, Clone, Copy)]
pub struct CpuKernels {
    isa: Isa,
}

impl CpuKernels {
    /// Kernels of [`Isa::selected`]: the best this CPU runs, or what `LLMJP_CPU_ISA` asks
    /// for (an error if unknown or not on this CPU).
    pub fn new() -> Result<Self> {
        Ok(Self::with_isa(Isa::selected()?))
    }

    /// Kernels of `isa` (or the best supported below it).
    pub fn with_isa(isa: Isa) -> Self {
        Self { isa: isa.usable() }
    }

    /// The instruction set its kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// A weight the checkpoint stores as K-quant super-blocks, repacked for the 8-bit
    /// dot-product kernels (AVX-512 VNNI or AVX2; on the portable ISA the K-quants are
    /// dequantized to bf16 by the float path instead).
    fn kquant_weight(
        &self,
        loader: &Loader<'_, Cpu>,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<Linear<Cpu>>> {
        if self.isa < Isa::Avx2 || loader.checkpoint.kquant(name).is_none() {
            return Ok(None);
        }
        let (format, view) = loader.checkpoint.kquant_view(name, rows, cols)?;
        let matrix = InterleavedKQuantMatrix::new(format, view.bytes(), rows, cols);
        view.release();
        Ok(Some(Linear::new(InterleavedKQuantWeight::new(
            matrix, self.isa,
        ))))
    }
}

impl DecoderOps<Cpu> for CpuKernels {
    fn name(&self) -> &'static str {
        "cpu kernels"
    }

    fn activation_dtype(&self, _weights: ComputeDtype) -> ComputeDtype {
        ComputeDtype::F32
    }

    /// The host KV cache's page.
    fn kv_block_positions(&self) -> usize {
        PAGE
    }

    fn load_linear(
        &self,
        loader: &Loader<'_, Cpu>,
        name: &str,
        out: usize,
        inputs: usize,
    ) -> Result<Linear<Cpu>> {
        if let Some(weight) = self.kquant_weight(loader, name, out, inputs)? {
            return Ok(weight);
        }
        if let Some(format) = loader.quantization(name, out, inputs)? {
            let matrix = loader.quant_matrix(name, out, inputs, format)?;
            if self.isa >= Isa::Avx2 {
                // The interleaved kernels (AVX2, AVX-512 VNNI) read the blocks repacked (the
                // same size).
                let repacked = InterleavedQuantMatrix::new(&matrix);
                return Ok(Linear::new(InterleavedQuantWeight::new(repacked, self.isa)));
            }
            matrix.populate();
            return Ok(Linear::new(QuantWeight::new(matrix, self.isa)));
        }
        if loader.weights != ComputeDtype::BF16 {
            return loader.dense(name, out, inputs);
        }
        let matrix = loader.bf16_matrix(name, out, inputs)?;
        matrix.populate();
        // Routing is a discrete choice between experts whose scores may be close: routers
        // (a few outputs, cheap) multiply f32 activations on every instruction set.
        let isa = match WeightRole::of_tensor(name) {
            WeightRole::Router => self.isa.with_f32_activations(),
            _ => self.isa,
        };
        Ok(Linear::new(Bf16Weight::new(matrix, isa)))
    }

    fn load_embedding(
        &self,
        loader: &Loader<'_, Cpu>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<Cpu>> {
        if let Some(weight) = self.kquant_weight(loader, name, vocab, hidden)? {
            return Ok(weight);
        }
        if let Some(format) = loader.quantization(name, vocab, hidden)? {
            let matrix = loader.quant_matrix(name, vocab, hidden, format)?;
            return Ok(Linear::new(QuantWeight::new(matrix, self.isa)));
        }
        if loader.weights != ComputeDtype::BF16 {
            return loader.dense(name, vocab, hidden);
        }
        // A prompt touches a few rows: a mapped table is read as they are needed (a tied
        // head populates it as it is first used).
        let matrix = loader.bf16_matrix(name, vocab, hidden)?;
        Ok(Linear::new(Bf16Weight::new(matrix, self.isa)))
    }

    fn new_layer_cache(
        &self,
        heads: Heads,
        capacity: usize,
        _dtype: ComputeDtype,
        _device: &Device,
        memory: &KvMemory,
    ) -> LayerCache<Cpu> {
        LayerCache::Ops(Box::new(HostKv::new(
            heads.kv_heads,
            heads.head_dim,
            capacity,
            memory,
        )))
    }

    fn rms_norm(&self, x: Tensor<Cpu, 2>, norm: &RmsNorm<Cpu>) -> Result<Tensor<Cpu, 2>> {
        let [rows, size] = x.dims();
        let x = HostRows::new(x);
        let mut out = vec![0f32; rows * size];
        for (row, dst) in x
            .values()
            .chunks_exact(size)
            .zip(out.chunks_exact_mut(size))
        {
            let variance = row.iter().map(|v| v * v).sum::<f32>() / size as f32;
            let scale = 1.0 / (variance + norm.eps as f32).sqrt();
            for ((d, v), w) in dst.iter_mut().zip(row).zip(&norm.host) {
                *d = w * (v * scale);
            }
        }
        Ok(host_tensor(out, [rows, size]))
    }

    fn rope(
        &self,
        x: Tensor<Cpu, 2>,
        heads: usize,
        rope: &Rope<Cpu>,
        batch: &[SeqSpan],
    ) -> Result<Tensor<Cpu, 2>> {
        let [rows, width] = x.dims();
        let mut x = HostRows::new(x).into_vec();
        let positions = batch.iter().flat_map(|s| s.positions());
        for (row, position) in x.chunks_exact_mut(width).zip(positions) {
            rope.rotate_row(row, heads, position);
        }
        Ok(host_tensor(x, [rows, width]))
    }

    fn attention(
        &self,
        q: Tensor<Cpu, 2>,
        k: Tensor<Cpu, 2>,
        v: Tensor<Cpu, 2>,
        heads: Heads,
        batch: &mut [LayerSeq<'_, Cpu>],
    ) -> Result<Tensor<Cpu, 2>> {
        let rows = q.dims()[0];
        let (q, k, v) = (HostRows::new(q), HostRows::new(k), HostRows::new(v));
        let (q_width, kv_width) = (
            heads.heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        // Every sequence's new keys and values, then the attention of all of them in one
        // parallel region.
        let mut items = Vec::with_capacity(batch.len());
        for seq in batch.iter_mut() {
            let Some(cache) = seq.cache.ops_cache_mut::<HostKv>() else {
                return Err(ModelError::CacheMismatch(
                    "a cache of other ops given to the CPU kernels".into(),
                ));
            };
            let (rows, start) = (&seq.span.rows, seq.span.start);
            let (k, v) = (
                rows_of(k.values(), rows, kv_width),
                rows_of(v.values(), rows, kv_width),
            );
            cache.write(k, v, start);
            items.push((&*cache, rows_of(q.values(), rows, q_width), start));
        }
        let mut out = Vec::with_capacity(rows * q_width);
        for values in attend_batch(self.isa, &items, heads.heads) {
            out.extend(values);
        }
        Ok(host_tensor(out, [rows, q_width]))
    }

    fn swiglu(&self, gate: Tensor<Cpu, 2>, up: Tensor<Cpu, 2>) -> Result<Tensor<Cpu, 2>> {
        let shape = gate.dims();
        let mut gate = HostRows::new(gate).into_vec();
        silu_mul(self.isa, &mut gate, HostRows::new(up).values());
        Ok(host_tensor(gate, shape))
    }
}
