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
        keys: Option<Tensor<B, 4>>,
        values: Option<Tensor<B, 4>>,
    },
    /// f32 on the host, keys transposed in blocks of positions (the CPU kernels).
    Host(HostKv),
}

/// The keys and values of every layer for one sequence, preallocated for `capacity`
/// positions, and how many positions are filled. Made by
/// [`CausalLm::new_cache`](crate::CausalLm::new_cache) for that model and its ops.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    pub(crate) len: usize,
    pub(crate) capacity: usize,
    /// What the cache was made for: the ops, `[kv_heads, head_dim]` and the dtype.
    pub(crate) made_for: CacheKind,
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
