//! A packed batch as the op layer sees it: each sequence's rows and first position
//! ([`SeqSpan`]), with its layer's cache ([`LayerSeq`]), and the head layout ([`Heads`]).

use std::ops::Range;

use burn::tensor::backend::Backend;

use crate::cache::LayerCache;

/// The rows of one sequence in a packed batch, and the position of its first row (the
/// number of positions already in its cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSpan {
    /// The sequence's rows in the packed batch.
    pub rows: Range<usize>,
    /// Position of its first row (the cached length).
    pub start: usize,
}

impl SeqSpan {
    /// Rows of the sequence in this pass.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the sequence has no rows in this pass.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The position of every row.
    pub fn positions(&self) -> Range<usize> {
        self.start..self.start + self.len()
    }
}

/// One sequence of a batch at one layer: its rows and that layer's cache.
#[derive(Debug)]
pub struct LayerSeq<'a, B: Backend> {
    /// The sequence's rows and first position.
    pub span: SeqSpan,
    /// This layer's keys and values of the sequence.
    pub cache: &'a mut LayerCache<B>,
}

/// The head layout of attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer with grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}
