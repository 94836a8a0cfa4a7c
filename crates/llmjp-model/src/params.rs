//! The parameters of the pieces every decoder here is built from, as the op layer takes
//! them: RMSNorm's weight, the rotary tables, the SwiGLU MLP's weights.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use llmjp_weights::Layout;

use crate::linear::{Linear, Loader};
use crate::{ComputeDtype, Result};

/// RMSNorm's weight and epsilon (the norm itself is
/// [`DecoderOps::rms_norm`](crate::ops::DecoderOps::rms_norm)).
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// In the activation dtype, on the device.
    pub weight: Tensor<B, 1>,
    /// In f32, on the host.
    pub host: Vec<f32>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub(crate) fn load(loader: &Loader<'_, B>, name: &str, size: usize, eps: f64) -> Result<Self> {
        let host = loader
            .checkpoint
            .read::<f32>(name, &[size], Layout::AsStored)?;
        let data = TensorData::new(host.clone(), [size]);
        let weight = Tensor::from_data(data, (loader.device, loader.activations.dtype()));
        Ok(Self { weight, host, eps })
    }
}

/// Rotary position embedding in transformers' rotate-half layout: cos/sin tables for every
/// position, computed once in f32 (on the host, and on the device in the activation dtype).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    cos_host: Vec<f32>,
    sin_host: Vec<f32>,
    head_dim: usize,
}

impl<B: Backend> Rope<B> {
    /// Tables of cos and sin for `max_positions` positions, as transformers computes them (f32).
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
            cos_host: cos,
            sin_host: sin,
            head_dim,
        }
    }

    /// Positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos_host.len() / self.head_dim
    }

    /// The `[positions, head_dim]` cos and sin tables on the device.
    pub fn tables(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.cos.clone(), self.sin.clone())
    }

    /// Rotates, in place, one row of `heads` heads at `position`, in f32 on the host.
    pub fn rotate_row(&self, row: &mut [f32], heads: usize, position: usize) {
        let d = self.head_dim;
        let half = d / 2;
        let cos = &self.cos_host[position * d..][..d];
        let sin = &self.sin_host[position * d..][..d];
        for head in row[..heads * d].chunks_exact_mut(d) {
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

/// The SwiGLU MLP's weights: `down(silu(gate(x)) * up(x))` (Mixtral's `w2(silu(w1 x) * w3
/// x)`), run by [`DecoderOps::mlp`](crate::ops::DecoderOps::mlp).
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// `gate_proj`: hidden to intermediate.
    pub gate: Linear<B>,
    /// `up_proj`: hidden to intermediate.
    pub up: Linear<B>,
    /// `down_proj`: intermediate to hidden.
    pub down: Linear<B>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn grown_rope_tables_extend_the_smaller_ones() {
        let device = Default::default();
        let small = Rope::<Cpu>::new(8, 10_000.0, 10, ComputeDtype::F32, &device);
        let large = Rope::<Cpu>::new(8, 10_000.0, 25, ComputeDtype::F32, &device);
        assert_eq!((small.positions(), large.positions()), (10, 25));
        assert_eq!(small.cos_host[..], large.cos_host[..80]);
        assert_eq!(small.sin_host[..], large.sin_host[..80]);
    }
}
