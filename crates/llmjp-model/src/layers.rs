//! The building blocks shared by the Llama and Mixtral decoders.

use std::sync::Arc;

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use llmjp_weights::{bf16, f16, Checkpoint, Layout};

use crate::cpu_bf16::Bf16Matrix;
use crate::{ComputeDtype, ModelError, Result};

/// Reads checkpoint tensors straight into device tensors of the compute dtype, or, with
/// `host_bf16`, keeps matrices as bf16 on the host for the CPU kernels (activations then
/// stay f32).
pub(crate) struct Loader<'a, B: Backend> {
    pub checkpoint: &'a Checkpoint,
    pub device: &'a B::Device,
    /// The dtype of activations and of the weights kept as burn tensors.
    pub dtype: ComputeDtype,
    pub host_bf16: bool,
}

impl<B: Backend> Loader<'_, B> {
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        layout: Layout,
    ) -> Result<Tensor<B, D>> {
        let mut out_shape = shape;
        if layout == Layout::Transposed {
            out_shape.reverse();
        }
        let ckpt = self.checkpoint;
        let data = match self.dtype {
            ComputeDtype::F32 => {
                TensorData::new(ckpt.read::<f32>(name, &shape, layout)?, out_shape)
            }
            ComputeDtype::F16 => {
                TensorData::new(ckpt.read::<f16>(name, &shape, layout)?, out_shape)
            }
            ComputeDtype::BF16 => {
                TensorData::new(ckpt.read::<bf16>(name, &shape, layout)?, out_shape)
            }
        };
        Ok(Tensor::from_data(data, (self.device, self.dtype.dtype())))
    }

    /// A `[out, in]` linear weight: transposed for `x @ w`, or bf16 on the host.
    pub fn linear(&self, name: &str, in_features: usize, out_features: usize) -> Result<Linear<B>> {
        if self.host_bf16 {
            let weight = self.host_matrix(name, out_features, in_features)?;
            weight.populate();
            return Ok(Linear::Host(Arc::new(weight)));
        }
        let weight = self.tensor(name, [out_features, in_features], Layout::Transposed)?;
        Ok(Linear::Dense(weight))
    }

    /// The `[vocab, hidden]` embedding table (bf16 on the host with `host_bf16`).
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embedding<B>> {
        if self.host_bf16 {
            // A prompt touches a few rows: a mapped table is read as they are needed.
            let table = self.host_matrix(name, vocab, hidden)?;
            return Ok(Embedding::Host(Arc::new(table)));
        }
        Ok(Embedding::Dense(self.tensor(
            name,
            [vocab, hidden],
            Layout::AsStored,
        )?))
    }

    /// A bf16 matrix used in place in the mapped file, or converted to bf16 when the
    /// checkpoint stores another dtype.
    fn host_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Bf16Matrix> {
        Ok(match self.checkpoint.mapped_bf16(name, rows, cols)? {
            Some(mapped) => Bf16Matrix::mapped(mapped, rows, cols),
            None => Bf16Matrix::from_vec(
                self.checkpoint
                    .read::<bf16>(name, &[rows, cols], Layout::AsStored)?,
                rows,
                cols,
            ),
        })
    }

    pub fn rms_norm(&self, name: &str, size: usize, eps: f64) -> Result<RmsNorm<B>> {
        let host = self
            .checkpoint
            .read::<f32>(name, &[size], Layout::AsStored)?;
        let data = TensorData::new(host.clone(), [size]);
        let weight = Tensor::from_data(data, (self.device, self.dtype.dtype()));
        Ok(RmsNorm { weight, host, eps })
    }
}

/// A bias-free linear layer.
#[derive(Debug, Clone)]
pub enum Linear<B: Backend> {
    /// A `[in, out]` tensor: `x @ w`.
    Dense(Tensor<B, 2>),
    /// bf16 weights on the host, run by the CPU kernels on f32 activations.
    Host(Arc<Bf16Matrix>),
}

impl<B: Backend> Linear<B> {
    /// The host weights of a model loaded for the CPU kernels' path.
    pub fn host(&self) -> &Bf16Matrix {
        match self {
            Self::Host(weight) => weight,
            Self::Dense(_) => unreachable!("the host path runs only on host weights"),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        match self {
            Self::Dense(weight) => Ok(x.matmul(weight.clone())),
            Self::Host(weight) => {
                let [rows, _] = x.dims();
                let device = x.device();
                let input = to_f32_vec(x)?;
                let out = weight.matmul(&input, rows);
                let data = TensorData::new(out, [rows, weight.rows()]);
                Ok(Tensor::from_data(data, (&device, DType::F32)))
            }
        }
    }
}

pub(crate) fn to_f32_vec<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Vec<f32>> {
    host_vec(x.into_data().convert::<f32>())
}

/// The values of data read back from a device.
pub(crate) fn host_vec<T: burn::tensor::Element>(data: TensorData) -> Result<Vec<T>> {
    data.into_vec::<T>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// RMSNorm as in transformers: normalise in f32, cast back, then scale.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    pub weight: Tensor<B, 1>,
    /// The weight in f32 on the host, for the CPU kernels' path.
    pub host: Vec<f32>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Rows `x` = `[rows, size]` on the host, in f32.
    pub fn forward_host(&self, x: &[f32]) -> Vec<f32> {
        let size = self.host.len();
        let mut out = vec![0f32; x.len()];
        for (row, dst) in x.chunks_exact(size).zip(out.chunks_exact_mut(size)) {
            let variance = row.iter().map(|v| v * v).sum::<f32>() / size as f32;
            let scale = 1.0 / (variance + self.eps as f32).sqrt();
            for ((d, v), w) in dst.iter_mut().zip(row).zip(&self.host) {
                *d = w * (v * scale);
            }
        }
        out
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(1);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed.cast(dtype) * self.weight.clone().unsqueeze_dim::<2>(0)
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))` (Mixtral's `w2(silu(w1 x) * w3 x)`).
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let hidden = silu(self.gate.forward(x.clone())?) * self.up.forward(x)?;
        self.down.forward(hidden)
    }

    /// The CPU kernels' path: rows `x` = `[rows, hidden]` on the host, silu(gate) * up
    /// fused, in f32.
    pub fn forward_host(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (gate, up, down) = (self.gate.host(), self.up.host(), self.down.host());
        let mut hidden = gate.matmul(x, rows);
        let up = up.matmul(x, rows);
        crate::cpu_bf16::silu_mul(&mut hidden, &up);
        down.matmul(&hidden, rows)
    }
}

/// Rotary position embedding in transformers' rotate-half layout, with cos/sin tables for
/// every position computed once in f32.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// The same tables on the host, for the CPU kernels' path.
    cos_host: Arc<Vec<f32>>,
    sin_host: Arc<Vec<f32>>,
    head_dim: usize,
}

impl<B: Backend> Rope<B> {
    pub fn new(
        head_dim: usize,
        theta: f64,
        max_positions: usize,
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        // transformers: inv_freq = 1 / theta^(arange(0, dim, 2) / dim), in f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for pos in 0..max_positions {
            // cat(freqs, freqs): both halves of the head share the frequencies.
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table = |values: &[f32]| {
            Tensor::<B, 2>::from_data(
                TensorData::new(values.to_vec(), [max_positions, head_dim]),
                device,
            )
            .cast(dtype.float())
        };
        Self {
            cos: table(&cos),
            sin: table(&sin),
            cos_host: Arc::new(cos),
            sin_host: Arc::new(sin),
            head_dim,
        }
    }

    /// Rotates, in place, rows `x` = `[seq, heads * head_dim]` at positions `start..`.
    pub fn rotate_rows(&self, x: &mut [f32], heads: usize, start: usize) {
        let d = self.head_dim;
        let half = d / 2;
        for (t, row) in x.chunks_exact_mut(heads * d).enumerate() {
            let cos = &self.cos_host[(start + t) * d..][..d];
            let sin = &self.sin_host[(start + t) * d..][..d];
            for head in row.chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    // rotate_half(x) = cat(-x2, x1)
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i + half] + a * sin[i + half];
                }
            }
        }
    }

    /// Rotates `x` (`[1, heads, seq, head_dim]`) for positions `start..start + seq`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let seq = x.dims()[2];
        let d = self.head_dim;
        let cos = self
            .cos
            .clone()
            .narrow(0, start, seq)
            .reshape([1, 1, seq, d]);
        let sin = self
            .sin
            .clone()
            .narrow(0, start, seq)
            .reshape([1, 1, seq, d]);
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}

/// The token embedding table, `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub enum Embedding<B: Backend> {
    Dense(Tensor<B, 2>),
    /// bf16 rows on the host, looked up into f32 activations.
    Host(Arc<Bf16Matrix>),
}

impl<B: Backend> Embedding<B> {
    /// Rows of `ids` on the host, in f32 (the CPU kernels' path).
    pub fn forward_host(&self, ids: &[u32]) -> Vec<f32> {
        let Self::Host(table) = self else {
            unreachable!("the host path runs only on host weights");
        };
        let hidden = table.cols();
        let mut values = vec![0f32; ids.len() * hidden];
        for (dst, &id) in values.chunks_mut(hidden).zip(ids) {
            table.row_f32(id as usize, dst);
        }
        values
    }

    pub fn forward(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Dense(weight) => {
                let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
                let n = ids.len();
                let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
                weight.clone().select(0, ids)
            }
            Self::Host(table) => {
                let data = TensorData::new(self.forward_host(ids), [ids.len(), table.cols()]);
                Tensor::from_data(data, (device, DType::F32))
            }
        }
    }

    /// The table as the head of a tied model: `[vocab, hidden]` is the head's `[out, in]`.
    pub fn as_tied_head(&self) -> Linear<B> {
        match self {
            Self::Dense(weight) => Linear::Dense(weight.clone().transpose()),
            Self::Host(table) => {
                table.populate();
                Linear::Host(table.clone())
            }
        }
    }
}
