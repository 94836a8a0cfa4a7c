//! The decoder layer every architecture here shares, written over [`DecoderOps`]:
//! attention (projections, RoPE, the cache) and the layer that joins it to a feed-forward
//! block of the architecture's choosing, each around an RMSNorm and a residual.

use std::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use llmjp_weights::ModelConfig;

use crate::linear::{Linear, Loader};
use crate::ops::{DecoderOps, Heads, LayerSeq, SeqSpan};
use crate::params::{Mlp, RmsNorm, Rope};
use crate::Result;

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

/// The feed-forward half of a decoder layer: what an architecture chooses.
pub(crate) trait FeedForward<B: Backend>: fmt::Debug + Send + Sync {
    fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>>;
}

impl<B: Backend> FeedForward<B> for Mlp<B> {
    fn forward(&self, ops: &dyn DecoderOps<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        ops.mlp(x, self)
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
        let normed = ops.rms_norm(x.clone(), &self.input_layernorm)?;
        let x = x + self.self_attn.forward(ops, normed, rope, spans, batch)?;
        let normed = ops.rms_norm(x.clone(), &self.post_attention_layernorm)?;
        Ok(x + self.feed_forward.forward(ops, normed)?)
    }
}
