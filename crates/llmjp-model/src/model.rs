//! [`CausalLm`]: the decoder stack shared by every architecture, loading and forward
//! passes over a batch of sequences.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llmjp_weights::{Checkpoint, ModelConfig};

use crate::backend::DecoderBackend;
use crate::cache::{CacheKind, KvCache};
use crate::kv_memory::KvMemory;
use crate::layers::{heads, DecoderLayer};
use crate::linear::{Linear, Loader};
use crate::ops::{DecoderOps, LayerSeq, SeqSpan};
use crate::params::{RmsNorm, Rope};
use crate::{models, ComputeDtype, ModelError, Result, WeightDtype};

/// One sequence of a batch: the ids to run after what its cache holds.
#[derive(Debug)]
pub struct Sequence<'a, B: Backend> {
    /// Token ids to run after the cached positions.
    pub ids: &'a [u32],
    /// The sequence's KV cache.
    pub cache: &'a mut KvCache<B>,
}

/// A Llama or Mixtral causal language model with its weights on a device, run by a
/// [`DecoderOps`].
///
/// A forward pass takes one or more sequences, each with its own ids and [`KvCache`]
/// (ragged lengths, any positions), appends their keys and values to the caches, and
/// returns f32 logits.
#[derive(Debug)]
pub struct CausalLm<B: Backend> {
    config: ModelConfig,
    dtype: ComputeDtype,
    /// What the weights were loaded as.
    weight_dtype: WeightDtype,
    /// The dtype of activations and the KV cache.
    activations: ComputeDtype,
    ops: Arc<dyn DecoderOps<B>>,
    device: B::Device,
    embed_tokens: Linear<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    lm_head: Linear<B>,
    /// Grown as positions are reached (see `rope_for`).
    rope: Mutex<Arc<Rope<B>>>,
    /// What its caches hold.
    kv_memory: KvMemory,
}

/// Positions a new cache has memory for before it first grows.
const INITIAL_CACHE_POSITIONS: usize = 256;
/// Positions the RoPE tables cover before they first grow.
const INITIAL_ROPE_POSITIONS: usize = 4096;

impl<B: DecoderBackend> CausalLm<B> {
    /// Loads `config.json` and the safetensors weights of a model folder, on the backend's
    /// default ops for `dtype`.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        dtype: impl Into<WeightDtype>,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::load(config, &checkpoint, dtype, device)
    }

    /// Builds the model from a parsed config and an opened checkpoint, with weights in
    /// `dtype` on `device`, on the backend's default ops for `dtype`.
    pub fn load(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        dtype: impl Into<WeightDtype>,
        device: &B::Device,
    ) -> Result<Self> {
        Self::load_with_progress(config, checkpoint, dtype, device, &mut |_, _| {})
    }

    /// [`load`](Self::load), calling `on_progress(done, total)` as the embeddings, each
    /// layer and the head are loaded.
    pub fn load_with_progress(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        dtype: impl Into<WeightDtype>,
        device: &B::Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let dtype = dtype.into();
        Self::load_with_ops(
            config,
            checkpoint,
            dtype,
            device,
            B::default_ops(dtype.compute)?,
            on_progress,
        )
    }
}

impl<B: Backend> CausalLm<B> {
    /// Loads the model to run on `ops` (any [`DecoderOps`] for this backend, e.g.
    /// [`Reference`](crate::ops::Reference) on every backend).
    pub fn load_with_ops(
        config: ModelConfig,
        checkpoint: &Checkpoint,
        dtype: impl Into<WeightDtype>,
        device: &B::Device,
        ops: Arc<dyn DecoderOps<B>>,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let weight_dtype = dtype.into();
        let dtype = weight_dtype.compute;
        let total = config.num_hidden_layers + 2;
        let activations = ops.activation_dtype(dtype);
        let loader = Loader {
            checkpoint,
            device,
            weights: dtype,
            activations,
            quantize: weight_dtype.quantize,
        };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens =
            ops.load_embedding(&loader, "model.embed_tokens.weight", vocab, hidden)?;
        on_progress(1, total);
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                let loaded = models::load_layer(ops.as_ref(), &loader, &config, layer);
                on_progress(layer + 2, total);
                loaded
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&loader, "model.norm.weight", hidden, config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings && !checkpoint.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            ops.load_linear(&loader, "lm_head.weight", vocab, hidden)?
        };
        on_progress(total, total);
        let rope = Mutex::new(Arc::new(Rope::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings.min(INITIAL_ROPE_POSITIONS),
            activations,
            device,
        )));
        Ok(Self {
            dtype,
            weight_dtype: WeightDtype {
                compute: dtype,
                quantize: weight_dtype.quantize.or(config.quantization),
            },
            activations,
            ops,
            device: device.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            config,
            kv_memory: KvMemory::default(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The dtype the weights were asked in.
    pub fn dtype(&self) -> ComputeDtype {
        self.dtype
    }

    /// What the weights were loaded as: the compute dtype, and the block format of its
    /// quantized weights (asked for, or stored so).
    pub fn weight_dtype(&self) -> WeightDtype {
        self.weight_dtype
    }

    /// The device its weights are on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The ops the model runs on.
    pub fn ops(&self) -> &dyn DecoderOps<B> {
        self.ops.as_ref()
    }

    /// A cache for sequences of up to `capacity` positions (at most the model's context).
    /// Its memory grows with the positions used, so a large capacity costs nothing until
    /// it is needed.
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        let capacity = capacity.min(self.config.max_position_embeddings);
        let allocated = capacity.min(INITIAL_CACHE_POSITIONS);
        let heads = heads(&self.config);
        KvCache {
            layers: (0..self.layers.len())
                .map(|_| {
                    self.ops.new_layer_cache(
                        heads,
                        allocated,
                        self.activations,
                        &self.device,
                        &self.kv_memory,
                    )
                })
                .collect(),
            len: 0,
            capacity,
            allocated,
            made_for: self.cache_kind(),
            made_for_context: self.config.max_position_embeddings,
        }
    }

    /// Positions in the KV cache's unit of growth and sharing, as its ops lay the cache
    /// out ([`DecoderOps::kv_block_positions`]): the block a prefix cache shares.
    pub fn kv_block_positions(&self) -> usize {
        self.ops.kv_block_positions()
    }

    /// The KV cache memory alive in this model's caches (see [`KvMemory`]).
    pub fn kv_memory(&self) -> &KvMemory {
        &self.kv_memory
    }

    /// Bytes of KV cache one position takes in every layer.
    pub fn kv_bytes_per_position(&self) -> usize {
        let dtype_bytes = self.activations.dtype().size();
        2 * self.layers.len() * self.config.num_key_value_heads * self.config.head_dim * dtype_bytes
    }

    /// RoPE tables covering positions `..needed`, grown (doubling, at most the context) when
    /// a sequence first reaches past them.
    fn rope_for(&self, needed: usize) -> Arc<Rope<B>> {
        let mut rope = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if rope.positions() < needed {
            let positions = needed
                .max(rope.positions().saturating_mul(2))
                .min(self.config.max_position_embeddings);
            *rope = Arc::new(Rope::new(
                self.config.head_dim,
                self.config.rope_theta,
                positions,
                self.activations,
                &self.device,
            ));
        }
        rope.clone()
    }

    fn cache_kind(&self) -> CacheKind {
        CacheKind {
            ops: self.ops.name(),
            layers: self.layers.len(),
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            dtype: self.activations,
        }
    }

    /// Runs `ids` after the cached positions and returns the logits of every position,
    /// `[ids.len(), vocab]` in f32.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Tensor<B, 2>> {
        self.run(&mut [Sequence { ids, cache }], Rows::All)
    }

    /// Runs `ids` after the cached positions and returns the logits of the last one,
    /// `[vocab]` in f32: a prefill when the cache is empty, a decode step for one id.
    pub fn forward_last(&self, ids: &[u32], cache: &mut KvCache<B>) -> Result<Tensor<B, 1>> {
        let logits = self.run(&mut [Sequence { ids, cache }], Rows::Last)?;
        Ok(logits.reshape([self.config.vocab_size]))
    }

    /// Runs every sequence of `batch` after its cached positions in one pass and returns
    /// the logits of each one's last position, `[batch.len(), vocab]` in f32. Nothing is
    /// run, and no cache changes, unless every sequence is valid.
    pub fn forward_batch(&self, batch: &mut [Sequence<'_, B>]) -> Result<Tensor<B, 2>> {
        self.run(batch, Rows::Last)
    }

    fn run(&self, batch: &mut [Sequence<'_, B>], rows: Rows) -> Result<Tensor<B, 2>> {
        if batch.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let mut spans = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        for seq in batch.iter() {
            self.check(seq)?;
        }
        let mut furthest = 0;
        for seq in batch.iter_mut() {
            let needed = seq.cache.len + seq.ids.len();
            seq.cache.reserve(needed);
            furthest = furthest.max(needed);
        }
        let rope = self.rope_for(furthest);
        for seq in batch.iter() {
            let first = ids.len();
            ids.extend_from_slice(seq.ids);
            spans.push(SeqSpan {
                rows: first..ids.len(),
                start: seq.cache.len,
            });
        }
        let ops = self.ops.as_ref();
        let mut x = ops.embed(&self.embed_tokens, &ids, self.activations, &self.device)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut seqs: Vec<LayerSeq<'_, B>> = batch
                .iter_mut()
                .zip(&spans)
                .map(|(seq, span)| LayerSeq {
                    span: span.clone(),
                    cache: &mut seq.cache.layers[l],
                })
                .collect();
            x = layer.forward(ops, x, &rope, &spans, &mut seqs)?;
        }
        for (seq, span) in batch.iter_mut().zip(&spans) {
            seq.cache.len = span.start + span.len();
        }
        if rows == Rows::Last {
            x = last_rows(x, &spans, &self.device);
        }
        ops.lm_head(ops.rms_norm(x, &self.norm)?, &self.lm_head)
    }

    /// Every check a sequence must pass before anything runs.
    fn check(&self, seq: &Sequence<'_, B>) -> Result<()> {
        if seq.ids.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = seq.ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ModelError::InvalidToken { id, vocab_size });
        }
        let cache = &seq.cache;
        if cache.made_for != self.cache_kind() || cache.layers.len() != self.layers.len() {
            return Err(ModelError::CacheMismatch(cache.made_for.to_string()));
        }
        let needed = cache.len + seq.ids.len();
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
        Ok(())
    }
}

/// Which rows' logits a pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    Last,
}

/// The last row of each sequence.
fn last_rows<B: Backend>(x: Tensor<B, 2>, spans: &[SeqSpan], device: &B::Device) -> Tensor<B, 2> {
    let [rows, size] = x.dims();
    if let [span] = spans {
        return x.slice([span.rows.end - 1..rows, 0..size]);
    }
    let last: Vec<i64> = spans.iter().map(|s| s.rows.end as i64 - 1).collect();
    let n = last.len();
    x.select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(last, [n]), device),
    )
}
