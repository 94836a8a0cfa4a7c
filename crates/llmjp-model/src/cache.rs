//! The KV cache of one sequence: every layer's keys and values, written in place.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::kernels::HostKv;

/// One layer's keys and values for one sequence, in the layout of the ops that made it.
#[derive(Debug, Clone)]
pub enum LayerCache<B: Backend> {
    /// `[1, kv_heads, capacity, head_dim]` tensors in the activation dtype (the reference
    /// ops). `None` only while being written.
    Tensors {
        /// Keys, `[1, kv_heads, allocated, head_dim]`.
        keys: Option<Tensor<B, 4>>,
        /// Values, `[1, kv_heads, allocated, head_dim]`.
        values: Option<Tensor<B, 4>>,
    },
    /// f32 on the host, keys transposed in blocks of positions (the CPU kernels).
    Host(HostKv),
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
}

impl<B: Backend> LayerCache<B> {
    /// Makes room for `capacity` positions, keeping what is written.
    fn grow(&mut self, capacity: usize) {
        match self {
            Self::Host(kv) => kv.grow(capacity),
            Self::Tensors { keys, values } => {
                for tensor in [keys, values].into_iter().flatten() {
                    let [batch, heads, filled, dim] = tensor.dims();
                    if capacity > filled {
                        let zeros = Tensor::zeros(
                            [batch, heads, capacity - filled, dim],
                            (&tensor.device(), tensor.dtype()),
                        );
                        *tensor = Tensor::cat(vec![tensor.clone(), zeros], 2);
                    }
                }
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
}
