//! The bf16 matmul in plain Rust, for any CPU: the reference the vector kernels are tested
//! against, and what runs where they cannot.

use crate::matrix::Bf16Matrix;

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// `out` points to a `[rows, w.rows()]` buffer nobody else writes in these columns.
pub(crate) unsafe fn columns(
    w: &Bf16Matrix,
    x: &[f32],
    rows: usize,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    let (n, k) = (w.rows(), w.cols());
    for c in first..first + count {
        for r in 0..rows {
            let value = w.dot(&x[r * k..(r + 1) * k], c, 0);
            // SAFETY: in bounds of the caller's buffer; this column is the caller's.
            unsafe { *out.add(r * n + c) = value };
        }
    }
}
