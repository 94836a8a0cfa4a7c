//! Attention's steps in plain Rust, for any CPU: the reference the vector kernels are tested
//! against. Sums run in order of the head dimension and of positions, with separate
//! multiplies and adds.

use super::block::{attend, BlockMath, HeadBlock, POSITION_BLOCK as P};
use crate::numerics::softmax;

/// The block's outputs, `[queries, head_dim]` (see [`attend`]).
pub(crate) fn attend_block(block: &HeadBlock) -> Vec<f32> {
    // SAFETY: the portable steps need nothing of the CPU.
    unsafe { attend::<Portable>(block) }
}

/// The steps of [`attend`] one value at a time.
struct Portable;

impl BlockMath for Portable {
    const LANES: usize = 1;
    const KEY_BLOCKS: usize = 1;

    unsafe fn score(keys: &[f32], query: &[f32], row: &mut [f32]) {
        let d = query.len();
        let scale = 1.0 / (d as f32).sqrt();
        for (block, scores) in keys.chunks_exact(d * P).zip(row.chunks_exact_mut(P)) {
            for (lane, score) in scores.iter_mut().enumerate() {
                let dot = (0..d).fold(0f32, |acc, c| acc + query[c] * block[c * P + lane]);
                *score = dot * scale;
            }
        }
    }

    unsafe fn softmax(row: &mut [f32], seen: usize) {
        softmax(&mut row[..seen]);
        row[seen..].fill(0.0);
    }

    unsafe fn add_weighted(out: &mut [f32], values: &[f32], weights: &[f32]) {
        for (value, &p) in values.chunks_exact(out.len()).zip(weights) {
            for (o, v) in out.iter_mut().zip(value) {
                *o += p * v;
            }
        }
    }
}
