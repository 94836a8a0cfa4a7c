//! The quantized matmul in plain Rust, for any CPU: the reference the vector kernels are
//! tested against.

use llmjp_weights::quant::BLOCK;

use super::rows::QuantizedRows;
use crate::matrix::{InterleavedQuantMatrix, QuantMatrix};

/// Block-quantized weights, read a block at a time.
pub(super) trait Blocks: Sync {
    /// Rows (output features).
    fn rows(&self) -> usize;
    /// Blocks per row.
    fn blocks(&self) -> usize;
    /// The integer values of block `b` of row `r`.
    fn block_values(&self, r: usize, b: usize) -> [i8; BLOCK];
    /// The scale of block `b` of row `r`.
    fn scale(&self, r: usize, b: usize) -> f32;
}

macro_rules! blocks {
    ($matrix:ty) => {
        impl Blocks for $matrix {
            fn rows(&self) -> usize {
                <$matrix>::rows(self)
            }
            fn blocks(&self) -> usize {
                <$matrix>::blocks(self)
            }
            fn block_values(&self, r: usize, b: usize) -> [i8; BLOCK] {
                <$matrix>::block_values(self, r, b)
            }
            fn scale(&self, r: usize, b: usize) -> f32 {
                <$matrix>::scale(self, r, b)
            }
        }
    };
}
blocks!(QuantMatrix);
blocks!(InterleavedQuantMatrix);

/// Output columns `first..first + count` of `x @ w.T` for every activation row: per block
/// an exact integer dot product, weighted by the two scales into an f32 sum in block order.
///
/// # Safety
/// `out` points to a `[x.rows, w.rows()]` buffer nobody else writes in these columns.
pub(super) unsafe fn columns(
    w: &impl Blocks,
    x: &QuantizedRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    let n = w.rows();
    debug_assert_eq!(x.cols, w.blocks() * BLOCK);
    for c in first..first + count {
        for r in 0..x.rows {
            let mut acc = 0f32;
            for b in 0..w.blocks() {
                let dot: i32 = w
                    .block_values(c, b)
                    .iter()
                    .zip(x.block(r, b))
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum();
                acc = (dot as f32).mul_add(w.scale(c, b) * x.scale(r, b), acc);
            }
            // SAFETY: in bounds of the caller's buffer; this column is the caller's.
            unsafe { *out.add(r * n + c) = acc };
        }
    }
}
