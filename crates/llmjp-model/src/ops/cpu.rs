//! [`CpuKernels`]: the op layer on burn-flex, run by the kernels of [`crate::kernels`] on
//! the tensors' host storage.

use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use super::{moe, DecoderOps, Heads, LayerSeq, Reference, SeqSpan};
use crate::backend::Cpu;
use crate::cache::{KvMemory, LayerCache};
use crate::kernels::{self, HostKv, Isa};
use crate::layers::{Mlp, RmsNorm, Rope};
use crate::linear::{Bf16Weight, Linear, Loader, QuantWeight};
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
        kernels::PAGE
    }

    fn load_linear(
        &self,
        loader: &Loader<'_, Cpu>,
        name: &str,
        out: usize,
        inputs: usize,
    ) -> Result<Linear<Cpu>> {
        if let Some(format) = loader.quantization(name, out, inputs)? {
            let matrix = loader.quant_matrix(name, out, inputs, format)?;
            matrix.populate();
            return Ok(Linear::new(QuantWeight::new(matrix, self.isa)));
        }
        if loader.weights != ComputeDtype::BF16 {
            return loader.dense(name, out, inputs);
        }
        let matrix = loader.bf16_matrix(name, out, inputs)?;
        matrix.populate();
        Ok(Linear::new(Bf16Weight::new(matrix, self.isa)))
    }

    fn load_embedding(
        &self,
        loader: &Loader<'_, Cpu>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<Cpu>> {
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
        LayerCache::Host(HostKv::new(
            heads.kv_heads,
            heads.head_dim,
            capacity,
            memory,
        ))
    }

    fn embed(
        &self,
        table: &Linear<Cpu>,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &Device,
    ) -> Result<Tensor<Cpu, 2>> {
        table.rows(ids, dtype, device)
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

    fn linear(&self, x: Tensor<Cpu, 2>, weight: &Linear<Cpu>) -> Result<Tensor<Cpu, 2>> {
        weight.forward(x)
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
        let mut out = Vec::with_capacity(rows * q_width);
        for seq in batch.iter_mut() {
            let LayerCache::Host(cache) = &mut *seq.cache else {
                return Err(ModelError::CacheMismatch(
                    "a tensor cache given to the CPU kernels".into(),
                ));
            };
            let rows = &seq.span.rows;
            let (k, v) = (
                rows_of(k.values(), rows, kv_width),
                rows_of(v.values(), rows, kv_width),
            );
            cache.write(k, v, seq.span.start);
            let q = rows_of(q.values(), rows, q_width);
            out.extend(cache.attend(self.isa, q, heads.heads, seq.span.start));
        }
        Ok(host_tensor(out, [rows, q_width]))
    }

    fn swiglu(&self, gate: Tensor<Cpu, 2>, up: Tensor<Cpu, 2>) -> Result<Tensor<Cpu, 2>> {
        let shape = gate.dims();
        let mut gate = HostRows::new(gate).into_vec();
        kernels::silu_mul(self.isa, &mut gate, HostRows::new(up).values());
        Ok(host_tensor(gate, shape))
    }

    fn moe(
        &self,
        x: Tensor<Cpu, 2>,
        router: &Linear<Cpu>,
        experts: &[Mlp<Cpu>],
        top_k: usize,
    ) -> Result<Tensor<Cpu, 2>> {
        moe::dispatch(self, x, router, experts, top_k)
    }

    fn lm_head(&self, x: Tensor<Cpu, 2>, head: &Linear<Cpu>) -> Result<Tensor<Cpu, 2>> {
        Reference.lm_head(x, head)
    }
}

/// Rows `rows` of `values` (rows of `width`).
fn rows_of<'a>(values: &'a [f32], rows: &std::ops::Range<usize>, width: usize) -> &'a [f32] {
    &values[rows.start * width..rows.end * width]
}

/// The rows of a burn-flex tensor as f32 on the host: its own storage when it is
/// contiguous f32 (no copy), else a converted contiguous copy.
pub(crate) struct HostRows(FlexTensor);

impl HostRows {
    pub fn new(x: Tensor<Cpu, 2>) -> Self {
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let tensor = x.into_primitive().tensor();
        Self(if tensor.as_slice::<f32>().is_some() {
            tensor
        } else {
            tensor.to_contiguous()
        })
    }

    pub fn values(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("contiguous f32 by construction")
    }

    /// The values, owned: the storage itself when nothing else shares it.
    pub fn into_vec(self) -> Vec<f32> {
        if self.0.is_unique() {
            self.0
                .into_data()
                .into_vec::<f32>()
                .expect("f32 by construction")
        } else {
            self.values().to_vec()
        }
    }
}

/// Host values as a burn-flex tensor of `shape`, without copying them.
pub(crate) fn host_tensor(values: Vec<f32>, shape: [usize; 2]) -> Tensor<Cpu, 2> {
    let data = TensorData::new(values, shape);
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(data)))
}
