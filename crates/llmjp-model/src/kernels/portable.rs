//! The kernels in plain Rust, for any CPU: the reference the vector kernels are tested
//! against, and what runs where they cannot.

use super::attention::HeadBlock;
use super::matrix::Bf16Matrix;
use super::POSITION_BLOCK;

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// `out` points to a `[rows, w.rows()]` buffer nobody else writes in these columns.
pub(super) unsafe fn columns(
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

/// `gate[i] = silu(gate[i]) * up[i]`.
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Softmax of `row` in place, in f32 with the maximum subtracted (as torch computes it):
/// MoE routing and attention scores.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in row.iter_mut() {
        *s /= sum;
    }
}

/// The block's outputs, `[queries, head_dim]`: sums in order of the head dimension and of
/// positions, with separate multiplies and adds.
pub(super) fn attend_block(block: &HeadBlock) -> Vec<f32> {
    let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; count * d];
    let mut scores = vec![0f32; width];
    for (i, (query, o)) in block
        .queries
        .iter()
        .zip(out.chunks_exact_mut(d))
        .enumerate()
    {
        let seen = block.seen(i);
        for (j, s) in scores[..seen].iter_mut().enumerate() {
            let keys = block.key_block(j / POSITION_BLOCK);
            let lane = j % POSITION_BLOCK;
            let dot = (0..d).fold(0f32, |acc, c| {
                acc + query[c] * keys[c * POSITION_BLOCK + lane]
            });
            *s = dot * scale;
        }
        softmax(&mut scores[..seen]);
        for (j, p) in scores[..seen].iter().enumerate() {
            let value = block.value_row(j);
            for (o, v) in o.iter_mut().zip(value) {
                *o += p * v;
            }
        }
    }
    out
}
