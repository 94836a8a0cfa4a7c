//! Attention's vector steps with AVX2 and FMA (x86-64), in 8-lane halves of the AVX-512
//! kernel's: one query's scores against 16 positions are two vectors (2 key blocks per
//! pass, each reused by all the queries); the softmax runs on vectors with a vector `exp`.

use std::arch::x86_64::*;

use super::block::{attend, BlockMath, HeadBlock, POSITION_BLOCK as P};
use crate::cpu::kernels::simd::{
    avx2::exp, avx2::horizontal_max, avx2::horizontal_sum, avx2::lanes,
};

/// The block's outputs, `[queries, head_dim]` (see [`attend`]).
///
/// # Safety
/// The CPU has AVX2 and FMA and `block.head_dim` is a multiple of 8.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
    // SAFETY: forwarded; inlined here, the steps run with this function's features.
    unsafe { attend::<Avx2>(block) }
}

/// The steps of [`attend`] in 8-lane vectors.
struct Avx2;

impl BlockMath for Avx2 {
    const LANES: usize = 8;
    const KEY_BLOCKS: usize = 2;

    #[inline(always)]
    unsafe fn score(keys: &[f32], query: &[f32], row: &mut [f32]) {
        match keys.len() / (query.len() * P) {
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
        for c in (0..d).step_by(8) {
            // SAFETY: `out` and each value row hold d floats, c + 8 <= d.
            unsafe {
                let mut acc = _mm256_loadu_ps(out.as_ptr().add(c));
                for (value, &p) in values.chunks_exact(d).zip(weights) {
                    let value = _mm256_loadu_ps(value.as_ptr().add(c));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(p), value, acc);
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(c), acc);
            }
        }
    }
}

/// One query's scores against the `N` key blocks in `keys` (16 positions each, two
/// vectors), scaled.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn score<const N: usize>(keys: &[f32], query: &[f32], row: &mut [f32]) {
    let d = query.len();
    assert_eq!(keys.len(), N * d * P);
    assert!(row.len() >= N * P);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (c, &q) in query.iter().enumerate() {
        let q = _mm256_set1_ps(q);
        for (m, acc) in acc.iter_mut().enumerate() {
            // SAFETY: block m holds d rows of 16, inside the asserted length.
            let (k0, k1) = unsafe {
                let at = keys.as_ptr().add((m * d + c) * P);
                (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
            };
            acc[0] = _mm256_fmadd_ps(q, k0, acc[0]);
            acc[1] = _mm256_fmadd_ps(q, k1, acc[1]);
        }
    }
    let scale = _mm256_set1_ps(1.0 / (d as f32).sqrt());
    for (acc, dst) in acc.iter().flatten().zip(row.chunks_exact_mut(8)) {
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_mul_ps(*acc, scale)) };
    }
}

/// Softmax of the first `seen` scores of `row` (whole vectors of 8); the rest become
/// exactly zero.
#[target_feature(enable = "avx2,fma")]
fn softmax(row: &mut [f32], seen: usize) {
    let mask = |chunk: usize| lanes(seen.saturating_sub(chunk * 8));
    let load = |chunk: &[f32]| {
        assert_eq!(chunk.len(), 8);
        // SAFETY: 8 floats.
        unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
    };
    let low = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut max = low;
    for (n, chunk) in row.chunks_exact(8).enumerate() {
        max = _mm256_max_ps(max, _mm256_blendv_ps(low, load(chunk), mask(n)));
    }
    let max = _mm256_set1_ps(horizontal_max(max));
    let mut sum = _mm256_setzero_ps();
    for (n, chunk) in row.chunks_exact_mut(8).enumerate() {
        let e = _mm256_and_ps(mask(n), exp(_mm256_sub_ps(load(chunk), max)));
        sum = _mm256_add_ps(sum, e);
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), e) };
    }
    let sum = _mm256_set1_ps(horizontal_sum(sum));
    for chunk in row.chunks_exact_mut(8) {
        let quotient = _mm256_div_ps(load(chunk), sum);
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), quotient) };
    }
}
