//! The pieces every decoder here is built from, one forward each, written over
//! [`DecoderOps`]: RMSNorm, rotary tables, attention, the SwiGLU MLP, and the decoder
//! layer that joins them around a feed-forward block of the architecture's choosing.

use std::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use llmjp_weights::{Layout, ModelConfig};

use crate::linear::{Linear, Loader};
use crate::ops::{DecoderOps, Heads, LayerSeq, SeqSpan};
use crate::{ComputeDtype, Result};

/// RMSNorm's weight and epsilon (the norm itself is [`DecoderOps::rms_norm`]).
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

    /// Normalises each row of `x`.
    pub fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        ops.rms_norm(x, self)
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

/// Self-attention: projections, RoPE, the cache and causal attention (GQA where the
/// config has fewer key/value heads).
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    heads: Heads,
}

impl<B: Backend> Attention<B> {
    /// Loads `{prefix}.q_proj` … `{prefix}.o_proj`.
    pub(crate) fn load(
        ops: &dyn DecoderOps<B>,
        loader: &Loader<'_, B>,
        prefix: &str,
        config: &ModelConfig,
    ) -> Result<Self> {
        let heads = heads(config);
        let hidden = config.hidden_size;
        let (q, kv) = (
            heads.heads * heads.head_dim,
            heads.kv_heads * heads.head_dim,
        );
        let linear = |name: &str, out, inputs| {
            ops.load_linear(loader, &format!("{prefix}.{name}.weight"), out, inputs)
        };
        Ok(Self {
            q_proj: linear("q_proj", q, hidden)?,
            k_proj: linear("k_proj", kv, hidden)?,
            v_proj: linear("v_proj", kv, hidden)?,
            o_proj: linear("o_proj", hidden, q)?,
            heads,
        })
    }

    /// `x` is the packed rows of `batch`, whose spans are `spans`.
    pub fn forward(
        &self,
        ops: &dyn DecoderOps<B>,
        x: Tensor<B, 2>,
        rope: &Rope<B>,
        spans: &[SeqSpan],
        batch: &mut [LayerSeq<'_, B>],
    ) -> Result<Tensor<B, 2>> {
        let q = ops.rope(
            ops.linear(x.clone(), &self.q_proj)?,
            self.heads.heads,
            rope,
            spans,
        )?;
        let k = ops.rope(
            ops.linear(x.clone(), &self.k_proj)?,
            self.heads.kv_heads,
            rope,
            spans,
        )?;
        let v = ops.linear(x, &self.v_proj)?;
        let out = ops.attention(q, k, v, self.heads, batch)?;
        ops.linear(out, &self.o_proj)
    }
}

/// The attention heads a config describes.
pub(crate) fn heads(config: &ModelConfig) -> Heads {
    Heads {
        heads: config.num_attention_heads,
        kv_heads: config.num_key_value_heads,
        head_dim: config.head_dim,
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))` (Mixtral's `w2(silu(w1 x) * w3 x)`).
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// `gate_proj`: hidden to intermediate.
    pub gate: Linear<B>,
    /// `up_proj`: hidden to intermediate.
    pub up: Linear<B>,
    /// `down_proj`: intermediate to hidden.
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// SwiGLU: `down(silu(gate(x)) * up(x))`.
    pub fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let gate = ops.linear(x.clone(), &self.gate)?;
        let up = ops.linear(x, &self.up)?;
        ops.linear(ops.swiglu(gate, up)?, &self.down)
    }
}

/// The feed-forward half of a decoder layer: what an architecture chooses.
pub(crate) trait FeedForward<B: Backend>: fmt::Debug + Send + Sync {
    fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>>;
}

impl<B: Backend> FeedForward<B> for Mlp<B> {
    fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        Mlp::forward(self, ops, x)
    }
}

/// RMSNorm → attention → residual, RMSNorm → feed-forward → residual.
#[derive(Debug)]
pub(crate) struct DecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    self_attn: Attention<B>,
    post_attention_layernorm: RmsNorm<B>,
    feed_forward: Box<dyn FeedForward<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Layer `layer`'s norms and attention as every architecture here names them
    /// (`model.layers.N.{input_layernorm,self_attn,post_attention_layernorm}`), around the
    /// architecture's `feed_forward`.
    pub fn load(
        ops: &dyn DecoderOps<B>,
        loader: &Loader<'_, B>,
        config: &ModelConfig,
        layer: usize,
        feed_forward: Box<dyn FeedForward<B>>,
    ) -> Result<Self> {
        let prefix = format!("model.layers.{layer}");
        let norm = |name: &str| {
            RmsNorm::load(
                loader,
                &format!("{prefix}.{name}.weight"),
                config.hidden_size,
                config.rms_norm_eps,
            )
        };
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(ops, loader, &format!("{prefix}.self_attn"), config)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            feed_forward,
        })
    }

    pub fn forward(
        &self,
        ops: &dyn DecoderOps<B>,
        x: Tensor<B, 2>,
        rope: &Rope<B>,
        spans: &[SeqSpan],
        batch: &mut [LayerSeq<'_, B>],
    ) -> Result<Tensor<B, 2>> {
        let normed = self.input_layernorm.forward(ops, x.clone())?;
        let x = x + self.self_attn.forward(ops, normed, rope, spans, batch)?;
        let normed = self.post_attention_layernorm.forward(ops, x.clone())?;
        Ok(x + self.feed_forward.forward(ops, normed)?)
    }
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
