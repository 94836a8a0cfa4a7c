//! Attention's vector steps with AVX-512F (x86-64): one query's scores against 16 positions
//! are one vector (4 key blocks per pass, each reused by all the queries); the softmax runs
//! on vectors of positions with a vector `exp`.

use std::arch::x86_64::*;

use super::block::{attend, BlockMath, HeadBlock, POSITION_BLOCK as P};
use crate::cpu::kernels::simd::{avx512::exp, avx512::lanes};

/// The block's outputs, `[queries, head_dim]` (see [`attend`]).
///
/// # Safety
/// The CPU has AVX-512F and `block.head_dim` is a multiple of 16.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
    // SAFETY: forwarded; inlined here, the steps run with this function's features.
    unsafe { attend::<Avx512>(block) }
}

/// The steps of [`attend`] in 16-lane vectors.
struct Avx512;

impl BlockMath for Avx512 {
    const LANES: usize = 16;
    const KEY_BLOCKS: usize = 4;

    #[inline(always)]
    unsafe fn score(keys: &[f32], query: &[f32], row: &mut [f32]) {
        match keys.len() / (query.len() * P) {
            // SAFETY: the caller's CPU runs this instruction set.
            4 => unsafe { score::<4>(keys, query, row) },
            // SAFETY: the caller's CPU runs this instruction set.
            3 => unsafe { score::<3>(keys, query, row) },
            // SAFETY: the caller's CPU runs this instruction set.
            2 => unsafe { score::<2>(keys, query, row) },
            // SAFETY: the caller's CPU runs this instruction set.
            _ => unsafe { score::<1>(keys, query, row) },
        }
    }

    #[inline(always)]
    unsafe fn softmax(row: &mut [f32], seen: usize) {
        // SAFETY: the caller's CPU runs this instruction set.
        unsafe { softmax(row, seen) }
    }

    #[inline(always)]
    unsafe fn add_weighted(out: &mut [f32], values: &[f32], weights: &[f32]) {
        let d = out.len();
        for c in (0..d).step_by(16) {
            // SAFETY: `out` and each value row hold d floats, c + 16 <= d.
            unsafe {
                let mut acc = _mm512_loadu_ps(out.as_ptr().add(c));
                for (value, &p) in values.chunks_exact(d).zip(weights) {
                    let value = _mm512_loadu_ps(value.as_ptr().add(c));
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(p), value, acc);
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(c), acc);
            }
        }
    }
}

/// One query's scores against the `N` key blocks in `keys` (16 positions each), scaled.
#[target_feature(enable = "avx512f")]
#[inline]
fn score<const N: usize>(keys: &[f32], query: &[f32], row: &mut [f32]) {
    let d = query.len();
    assert_eq!(keys.len(), N * d * P);
    assert!(row.len() >= N * P);
    let mut acc = [_mm512_setzero_ps(); N];
    for (c, &q) in query.iter().enumerate() {
        let q = _mm512_set1_ps(q);
        for (m, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block m holds d rows of 16, inside the asserted length.
            let k = unsafe { _mm512_loadu_ps(keys.as_ptr().add((m * d + c) * P)) };
            *acc = _mm512_fmadd_ps(q, k, *acc);
        }
    }
    let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
    for (acc, dst) in acc.iter().zip(row.chunks_exact_mut(P)) {
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_mul_ps(*acc, scale)) };
    }
}

/// Softmax of the first `seen` scores of `row` (whole vectors); the rest become exactly
/// zero. The vector form of the scalar softmax.
#[target_feature(enable = "avx512f")]
fn softmax(row: &mut [f32], seen: usize) {
    let mask = |chunk: usize| lanes(seen.saturating_sub(chunk * P));
    let load = |chunk: &[f32]| {
        assert_eq!(chunk.len(), P);
        // SAFETY: 16 floats.
        unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
    };
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for (n, chunk) in row.chunks_exact(P).enumerate() {
        max = _mm512_mask_max_ps(max, mask(n), max, load(chunk));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for (n, chunk) in row.chunks_exact_mut(P).enumerate() {
        let e = _mm512_maskz_mov_ps(mask(n), exp(_mm512_sub_ps(load(chunk), max)));
        sum = _mm512_add_ps(sum, e);
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), e) };
    }
    let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
    for chunk in row.chunks_exact_mut(P) {
        let quotient = _mm512_div_ps(load(chunk), sum);
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), quotient) };
    }
}
