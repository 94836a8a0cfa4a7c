//! [`CausalLm`]: the decoder stack shared by Llama and Mixtral, loading and forward passes.

use std::any::TypeId;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use llmjp_weights::{Architecture, Checkpoint, ModelConfig};

use crate::attention::{Attention, LayerCache};
use crate::backend::Cpu;
use crate::layers::{Embedding, Linear, Loader, Mlp, RmsNorm, Rope};
use crate::mixtral::SparseMoe;
use crate::{llama, ComputeDtype, ModelError, Result};

/// The feed-forward half of a decoder layer.
#[derive(Debug, Clone)]
enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Sparse(SparseMoe<B>),
}

#[derive(Debug, Clone)]
struct DecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    self_attn: Attention<B>,
    post_attention_layernorm: RmsNorm<B>,
    feed_forward: FeedForward<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(loader: &Loader<'_, B>, config: &ModelConfig, layer: usize) -> Result<Self> {
        let prefix = format!("model.layers.{layer}");
        let (hidden, eps) = (config.hidden_size, config.rms_norm_eps);
        let feed_forward = match config.architecture {
            Architecture::Llama => FeedForward::Dense(llama::load_mlp(loader, config, layer)?),
            Architecture::Mixtral => FeedForward::Sparse(SparseMoe::load(loader, config, layer)?),
        };
        Ok(Self {
            input_layernorm: loader.rms_norm(
                &format!("{prefix}.input_layernorm.weight"),
                hidden,
                eps,
            )?,
            self_attn: Attention::load(
                loader,
                &format!("{prefix}.self_attn"),
                hidden,
                config.num_attention_heads,
                config.num_key_value_heads,
                config.head_dim,
            )?,
            post_attention_layernorm: loader.rms_norm(
                &format!("{prefix}.post_attention_layernorm.weight"),
                hidden,
                eps,
            )?,
            feed_forward,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Result<Tensor<B, 2>> {
        let attn =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rope, cache, start)?;
        let x = x + attn;
        let normed = self.post_attention_layernorm.forward(x.clone());
        let ff = match &self.feed_forward {
            FeedForward::Dense(mlp) => mlp.forward(normed)?,
            FeedForward::Sparse(moe) => moe.forward(normed)?,
        };
        Ok(x + ff)
    }

    /// The CPU kernels' path: rows `x` = `[seq, hidden]` on the host, updated in place.
    fn forward_host(
        &self,
        x: &mut [f32],
        seq: usize,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) {
        let normed = self.input_layernorm.forward_host(x);
        let attn = self
            .self_attn
            .forward_host(&normed, seq, rope, cache, start);
        x.iter_mut().zip(&attn).for_each(|(x, a)| *x += a);
        let normed = self.post_attention_layernorm.forward_host(x);
        let ff = match &self.feed_forward {
            FeedForward::Dense(mlp) => mlp.forward_host(&normed, seq),
            FeedForward::Sparse(moe) => moe.forward_host(&normed, seq),
        };
        x.iter_mut().zip(&ff).for_each(|(x, f)| *x += f);
    }
}

/// The keys and values of every layer for one sequence, preallocated for `capacity`
/// positions, and how many positions are filled.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    len: usize,
    capacity: usize,
    /// What the cache was made for: `[kv_heads, head_dim]`, the dtype, host or device.
    made_for: (usize, usize, ComputeDtype, bool),
}

impl<B: Backend> KvCache<B> {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence; the memory is kept for the next one.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// A Llama or Mixtral causal language model with its weights on a device.
///
/// Batch size is one: a forward pass takes the ids of one sequence, appends their keys and
/// values to a [`KvCache`], and returns f32 logits.
#[derive(Debug, Clone)]
pub struct CausalLm<B: Backend> {
    config: ModelConfig,
    dtype: ComputeDtype,
    /// The dtype of activations and the KV cache.
    activations: ComputeDtype,
    /// Weights, cache and attention on the host (the CPU kernels' path).
    host_bf16: bool,
    device: B::Device,
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    rope: Rope<B>,
}

impl<B: Backend> CausalLm<B> {
    /// Loads `config.json` and the safetensors weights of a model folder.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::load(config, &checkpoint, dtype, device)
    }

    /// Builds the model from a parsed config and an opened checkpoint, converting every
    /// weight to `dtype` on `device`.
    pub fn load(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_with_progress(config, checkpoint, dtype, device, &mut |_, _| {})
    }

    /// [`load`](Self::load), calling `on_progress(done, total)` as the embeddings, each
    /// layer and the head reach the device.
    pub fn load_with_progress(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        dtype: ComputeDtype,
        device: &B::Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let total = config.num_hidden_layers + 2;
        // On the CPU, bf16 means bf16 weights run by the host kernels on f32 activations:
        // burn-flex's own bf16 matmul widens both operands on every call.
        let host_bf16 = dtype == ComputeDtype::BF16 && TypeId::of::<B>() == TypeId::of::<Cpu>();
        let activations = if host_bf16 { ComputeDtype::F32 } else { dtype };
        let loader = Loader {
            checkpoint,
            device,
            dtype: activations,
            host_bf16,
        };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens = loader.embedding("model.embed_tokens.weight", vocab, hidden)?;
        on_progress(1, total);
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                let loaded = DecoderLayer::load(&loader, &config, layer);
                on_progress(layer + 2, total);
                loaded
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = loader.rms_norm("model.norm.weight", hidden, config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings && !checkpoint.contains("lm_head.weight") {
            embed_tokens.as_tied_head()
        } else {
            loader.linear("lm_head.weight", hidden, vocab)?
        };
        on_progress(total, total);
        let rope = Rope::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
            activations,
            device,
        );
        Ok(Self {
            dtype,
            activations,
            host_bf16,
            device: device.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> ComputeDtype {
        self.dtype
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// A cache for sequences of up to `capacity` positions (at most the model's context).
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        let capacity = capacity.min(self.config.max_position_embeddings);
        let kv_heads = self.config.num_key_value_heads;
        let shape = [1, kv_heads, capacity, self.config.head_dim];
        KvCache {
            layers: (0..self.layers.len())
                .map(|_| {
                    if self.host_bf16 {
                        LayerCache::new_host(shape)
                    } else {
                        LayerCache::new(shape, self.activations, &self.device)
                    }
                })
                .collect(),
            len: 0,
            capacity,
            made_for: self.cache_kind(),
        }
    }

    fn cache_kind(&self) -> (usize, usize, ComputeDtype, bool) {
        let c = &self.config;
        (
            c.num_key_value_heads,
            c.head_dim,
            self.activations,
            self.host_bf16,
        )
    }

    /// Runs `ids` after the cached positions and returns the logits of every position,
    /// `[ids.len(), vocab]` in f32.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Tensor<B, 2>> {
        let seq = ids.len();
        match self.hidden_states(ids, cache)? {
            Hidden::Device(hidden) => Ok(self
                .lm_head
                .forward(self.norm.forward(hidden))?
                .cast(FloatDType::F32)),
            Hidden::Host(hidden) => {
                let logits = self.head_host(&hidden, seq);
                let data = TensorData::new(logits, [seq, self.config.vocab_size]);
                Ok(Tensor::from_data(data, (&self.device, DType::F32)))
            }
        }
    }

    /// Runs `ids` after the cached positions and returns the logits of the last one,
    /// `[vocab]` in f32: a prefill when the cache is empty, a decode step for one id.
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Tensor<B, 1>> {
        let vocab = self.config.vocab_size;
        match self.hidden_states(ids, cache)? {
            Hidden::Device(hidden) => {
                let [seq, size] = hidden.dims();
                let last = hidden.slice([seq - 1..seq, 0..size]);
                let logits = self
                    .lm_head
                    .forward(self.norm.forward(last))?
                    .cast(FloatDType::F32);
                Ok(logits.reshape([vocab]))
            }
            Hidden::Host(hidden) => {
                let size = self.config.hidden_size;
                let logits = self.head_host(&hidden[hidden.len() - size..], 1);
                Ok(Tensor::from_data(
                    TensorData::new(logits, [vocab]),
                    (&self.device, DType::F32),
                ))
            }
        }
    }

    /// Final norm and LM head of rows on the host.
    fn head_host(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        self.lm_head
            .host()
            .matmul(&self.norm.forward_host(hidden), rows)
    }

    fn hidden_states(&self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Hidden<B>> {
        if ids.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ModelError::InvalidToken { id, vocab_size });
        }
        if cache.layers.len() != self.layers.len() || cache.made_for != self.cache_kind() {
            let (kv_heads, head_dim, dtype, host) = cache.made_for;
            return Err(ModelError::CacheMismatch(format!(
                "{} layers of {kv_heads} kv heads x {head_dim}, {dtype:?}{}",
                cache.layers.len(),
                if host { " on the host" } else { "" }
            )));
        }
        let start = cache.len;
        let needed = start + ids.len();
        let context = self.config.max_position_embeddings;
        if needed > context {
            return Err(ModelError::ContextOverflow {
                needed,
                limit: context,
                reason: "max_position_embeddings",
            });
        }
        if needed > cache.capacity {
            return Err(ModelError::ContextOverflow {
                needed,
                limit: cache.capacity,
                reason: "KV cache capacity",
            });
        }
        let hidden = if self.host_bf16 {
            // The CPU kernels' path: host rows from the embedding to the last layer.
            let mut x = self.embed_tokens.forward_host(ids);
            for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
                layer.forward_host(&mut x, ids.len(), &self.rope, layer_cache, start);
            }
            Hidden::Host(x)
        } else {
            let mut x = self.embed_tokens.forward(ids, &self.device);
            for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
                x = layer.forward(x, &self.rope, layer_cache, start)?;
            }
            Hidden::Device(x)
        };
        cache.len = needed;
        Ok(hidden)
    }
}

/// The last layer's output: a device tensor, or rows on the host (the CPU kernels' path).
enum Hidden<B: Backend> {
    Device(Tensor<B, 2>),
    Host(Vec<f32>),
}
