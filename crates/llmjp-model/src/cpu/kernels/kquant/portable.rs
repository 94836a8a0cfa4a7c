//! The K-quant matmul in plain Rust: the reference the vector kernel is tested against.

use llmjp_weights::kquant::{KQuant, SUPER_BLOCK};

use super::KRows;
use crate::matrix::InterleavedKQuantMatrix;

/// Output columns `first..first + count` of `x @ w.T` for every activation row (see the
/// module docs for the arithmetic).
///
/// # Safety
/// `out` points to a `[x.rows, w.rows()]` buffer nobody else writes in these columns.
pub(super) unsafe fn columns(
    w: &InterleavedKQuantMatrix,
    x: &KRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    let (n, k, blocks) = (w.rows(), w.cols(), w.blocks());
    for c in first..first + count {
        for r in 0..x.rows {
            let mut acc = 0f32;
            for b in 0..blocks {
                let q = w.block_values(c, b);
                let xs = &x.values[r * k + b * SUPER_BLOCK..][..SUPER_BLOCK];
                let dot = |range: std::ops::Range<usize>, offset: i32| -> i32 {
                    range.map(|i| (q[i] as i32 - offset) * xs[i] as i32).sum()
                };
                let (d, dmin) = w.super_scales(c, b);
                let dx = x.scales[r * blocks + b];
                match w.format() {
                    KQuant::Q4K | KQuant::Q5K => {
                        let isum: i32 = (0..8)
                            .map(|j| w.sub_scale(c, b, j) * dot(32 * j..32 * j + 32, 0))
                            .sum();
                        let msum: i32 = (0..8).map(|j| w.sub_min(c, b, j) * x.sum32(r, b, j)).sum();
                        acc = (isum as f32).mul_add(d * dx, acc);
                        acc = (-(msum as f32)).mul_add(dmin * dx, acc);
                    }
                    KQuant::Q6K => {
                        let isum: i32 = (0..16)
                            .map(|s| w.sub_scale(c, b, s) * dot(16 * s..16 * s + 16, 32))
                            .sum();
                        acc = (isum as f32).mul_add(d * dx, acc);
                    }
                }
            }
            // SAFETY: in bounds of the caller's buffer; this column is the caller's.
            unsafe { *out.add(r * n + c) = acc };
        }
    }
}
