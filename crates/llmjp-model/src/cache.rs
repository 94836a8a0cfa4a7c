//! The KV cache of one sequence: every layer's keys and values, written in place, in the
//! layout of the ops that made it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::kv_memory::{Charge, KvMemory};

/// One layer's keys and values for one sequence, in the layout of the ops that made it.
#[derive(Debug)]
pub enum LayerCache<B: Backend> {
    /// `[1, kv_heads, capacity, head_dim]` tensors in the activation dtype (the reference
    /// ops). `None` only while being written.
    Tensors {
        /// Keys, `[1, kv_heads, allocated, head_dim]`.
        keys: Option<Tensor<B, 4>>,
        /// Values, `[1, kv_heads, allocated, head_dim]`.
        values: Option<Tensor<B, 4>>,
        /// Their bytes, counted in the model's [`KvMemory`].
        #[doc(hidden)]
        charge: TensorCharge,
    },
    /// A layout of the ops' own (the CPU kernels' pages of f32 on the host).
    Ops(Box<dyn OpsLayerCache>),
}

impl<B: Backend> Clone for LayerCache<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Tensors {
                keys,
                values,
                charge,
            } => Self::Tensors {
                keys: keys.clone(),
                values: values.clone(),
                charge: charge.clone(),
            },
            Self::Ops(cache) => Self::Ops(cache.clone_box()),
        }
    }
}

/// One layer's keys and values in a layout of the ops' own (the CPU kernels' pages): what
/// the model asks of every such cache. The ops that made one reach their layout with
/// [`LayerCache::ops_cache_mut`].
pub trait OpsLayerCache: fmt::Debug + Send + Sync + Any {
    /// Positions it has memory for.
    fn allocated(&self) -> usize;

    /// Makes room for `capacity` positions, keeping what is written.
    fn grow(&mut self, capacity: usize);

    /// A cache holding this one's first `positions` positions, sharing memory (copied when
    /// either side first writes to it).
    fn fork(&self, positions: usize) -> Box<dyn OpsLayerCache>;

    /// A copy sharing all its memory.
    fn clone_box(&self) -> Box<dyn OpsLayerCache>;

    /// Units of memory (pages) it shares with another cache.
    fn shared_pages(&self) -> usize;

    /// Itself, for [`LayerCache::ops_cache_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The keys and values of every layer for one sequence, for up to `capacity` positions, and
/// how many positions are filled. Memory is allocated as positions are used (growing by
/// doubling), not for the whole capacity. Made by
/// [`CausalLm::new_cache`](crate::CausalLm::new_cache) for that model and its ops.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    pub(crate) len: usize,
    pub(crate) capacity: usize,
    /// Positions the layers have room for now (at most `capacity`).
    pub(crate) allocated: usize,
    /// What the cache was made for: the ops, `[kv_heads, head_dim]` and the dtype.
    pub(crate) made_for: CacheKind,
    /// The model's context: the most positions any cache holds.
    pub(crate) made_for_context: usize,
}

/// The bytes a tensor cache holds, counted in the model's [`KvMemory`] once however many
/// forks share the tensors; a fork that writes gets tensors, and a charge, of its own.
#[derive(Debug, Clone)]
pub struct TensorCharge(Arc<Charge>);

impl TensorCharge {
    /// Called before the tensors are written: if forks share them, the write copies them,
    /// and the copy is counted.
    pub(crate) fn unshare(&mut self) {
        if Arc::strong_count(&self.0) > 1 {
            self.0 = Arc::new(Charge::clone(&self.0));
        }
    }

    fn set(&mut self, bytes: usize) {
        self.unshare();
        if let Some(charge) = Arc::get_mut(&mut self.0) {
            charge.set(bytes);
        }
    }
}

impl<B: Backend> LayerCache<B> {
    /// Tensor caches of `[1, kv_heads, capacity, head_dim]` zeros in `dtype`, counted in
    /// `memory`.
    pub fn zeros(
        shape: [usize; 4],
        dtype: crate::ComputeDtype,
        device: &B::Device,
        memory: &KvMemory,
    ) -> Self {
        let zeros = || Some(Tensor::zeros(shape, (device, dtype.dtype())));
        let bytes = 2 * shape.iter().product::<usize>() * dtype.dtype().size();
        Self::Tensors {
            keys: zeros(),
            values: zeros(),
            charge: TensorCharge(Arc::new(memory.charge(bytes))),
        }
    }

    /// The ops' own cache of type `T`, if this is one.
    pub fn ops_cache_mut<T: OpsLayerCache>(&mut self) -> Option<&mut T> {
        match self {
            Self::Ops(cache) => cache.as_any_mut().downcast_mut(),
            Self::Tensors { .. } => None,
        }
    }

    /// The first `positions` positions, sharing memory (copied on the first write).
    fn fork(&self, positions: usize) -> Self {
        match self {
            Self::Ops(cache) => Self::Ops(cache.fork(positions)),
            tensors => tensors.clone(),
        }
    }

    /// Makes room for `capacity` positions, keeping what is written.
    fn grow(&mut self, capacity: usize) {
        match self {
            Self::Ops(cache) => cache.grow(capacity),
            Self::Tensors {
                keys,
                values,
                charge,
            } => {
                let mut bytes = 0;
                for tensor in [keys, values].into_iter().flatten() {
                    let [batch, heads, filled, dim] = tensor.dims();
                    if capacity > filled {
                        let zeros = Tensor::zeros(
                            [batch, heads, capacity - filled, dim],
                            (&tensor.device(), tensor.dtype()),
                        );
                        *tensor = Tensor::cat(vec![tensor.clone(), zeros], 2);
                    }
                    bytes += tensor.shape().num_elements() * tensor.dtype().size();
                }
                charge.set(bytes);
            }
        }
    }
}

/// What a cache was made for; a model takes only a cache of its own kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheKind {
    pub ops: &'static str,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype: crate::ComputeDtype,
}

impl std::fmt::Display for CacheKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers of {} kv heads x {}, {} on the {} ops",
            self.layers, self.kv_heads, self.head_dim, self.dtype, self.ops
        )
    }
}

impl<B: Backend> KvCache<B> {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions the cache has memory for now (it grows up to [`capacity`](Self::capacity)).
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Makes room for `needed` positions (at most the capacity), doubling as it grows.
    pub(crate) fn reserve(&mut self, needed: usize) {
        if needed <= self.allocated {
            return;
        }
        let target = needed
            .max(self.allocated.saturating_mul(2))
            .min(self.capacity);
        for layer in &mut self.layers {
            layer.grow(target);
        }
        self.allocated = target;
    }

    /// Forgets the sequence; the memory is kept for the next one.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// A cache holding the first `positions` positions of this one, for sequences of up to
    /// `capacity` positions: a prompt that starts with tokens this cache has seen continues
    /// from there instead of running them again. Memory is shared, not copied: on the CPU
    /// kernels' layout in pages, each copied when either cache first writes to it; a tensor
    /// cache is copied on its first write. `positions` beyond [`len`](Self::len) or
    /// `capacity` are cut to them.
    pub fn fork(&self, positions: usize, capacity: usize) -> Self {
        let capacity = capacity.min(self.made_for_context);
        let len = positions.min(self.len).min(capacity);
        let layers: Vec<_> = self.layers.iter().map(|l| l.fork(len)).collect();
        let allocated = match layers.first() {
            Some(LayerCache::Ops(cache)) => cache.allocated(),
            _ => self.allocated,
        };
        Self {
            layers,
            len,
            capacity,
            allocated,
            made_for: self.made_for.clone(),
            made_for_context: self.made_for_context,
        }
    }

    /// Pages of the CPU kernels' layout this cache shares with another cache, in its first
    /// layer (0 for tensor caches).
    pub fn shared_pages(&self) -> usize {
        match self.layers.first() {
            Some(LayerCache::Ops(cache)) => cache.shared_pages(),
            _ => 0,
        }
    }
}
