//! The quantized matmul in plain Rust, for any CPU: the reference the vector kernel is
//! tested against.

use llmjp_weights::quant::BLOCK;

use super::rows::QuantizedRows;
use crate::matrix::QuantMatrix;

/// Output columns `first..first + count` of `x @ w.T` for every activation row: per block
/// an exact integer dot product, weighted by the two scales into an f32 sum in block order.
///
/// # Safety
/// `out` points to a `[x.rows, w.rows()]` buffer nobody else writes in these columns.
pub(super) unsafe fn columns(
    w: &QuantMatrix,
    x: &QuantizedRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    let n = w.rows();
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
    debug_assert_eq!(w.cols() % BLOCK, 0);
}
