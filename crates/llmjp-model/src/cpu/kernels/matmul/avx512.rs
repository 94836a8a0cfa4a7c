//! The bf16 matmul with AVX-512F (x86-64).

use std::arch::x86_64::*;

use super::super::tasks::in_four_streams;
use crate::matrix::Bf16Matrix;

/// k values per step: 32 bf16, one 64-byte cache line of a weight row.
const K_STEP: usize = 32;

/// How far ahead the decode kernel prefetches weights.
const PREFETCH_BYTES: usize = 1024;

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// The CPU has AVX-512F; `out` points to a `[rows, w.rows()]` buffer nobody else
/// writes in these columns.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn columns(
    w: &Bf16Matrix,
    x: &[f32],
    rows: usize,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    if rows == 1 {
        in_four_streams(
            first,
            count,
            // SAFETY: forwarded; every row named is in bounds.
            |streams| unsafe { tile::<1, 4>(w, x, 0, streams, out) },
            // SAFETY: as above.
            |c| unsafe { tile::<1, 1>(w, x, 0, [c], out) },
        );
        return;
    }
    let mut c = first;
    while c < first + count {
        let nr = if first + count - c >= 2 { 2 } else { 1 };
        let mut r = 0;
        while r < rows {
            let mr = (rows - r).min(4);
            let (two, one) = ([c, c + 1], [c]);
            // SAFETY: forwarded; rows r..r + mr and columns c..c + nr are in bounds.
            unsafe {
                match (mr, nr) {
                    (4, 2) => tile::<4, 2>(w, x, r, two, out),
                    (3, 2) => tile::<3, 2>(w, x, r, two, out),
                    (2, 2) => tile::<2, 2>(w, x, r, two, out),
                    (1, 2) => tile::<1, 2>(w, x, r, two, out),
                    (4, _) => tile::<4, 1>(w, x, r, one, out),
                    (3, _) => tile::<3, 1>(w, x, r, one, out),
                    (2, _) => tile::<2, 1>(w, x, r, one, out),
                    _ => tile::<1, 1>(w, x, r, one, out),
                }
            }
            r += mr;
        }
        c += nr;
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`. Each output
/// accumulates the two halves of a step in two chains, in the same order whatever the
/// tile, so one row at a time gives the same numbers as many.
///
/// # Safety
/// The CPU has AVX-512F; the rows and columns named are in bounds of `x`, `w` and the
/// `[rows, w.rows()]` buffer at `out`, whose columns `cols` are the caller's.
// Indexing the register tile by row and column reads clearer than iterators here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const MR: usize, const NR: usize>(
    w: &Bf16Matrix,
    x: &[f32],
    row: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    let (n, k) = (w.rows(), w.cols());
    let vector_k = k / K_STEP * K_STEP;
    let weights = w.bytes().as_ptr();
    let xs = x.as_ptr();
    let mut acc_lo = [[_mm512_setzero_ps(); NR]; MR];
    let mut acc_hi = [[_mm512_setzero_ps(); NR]; MR];
    let mut i = 0;
    while i < vector_k {
        let mut lo = [_mm512_setzero_ps(); NR];
        let mut hi = [_mm512_setzero_ps(); NR];
        for c in 0..NR {
            // SAFETY: row cols[c] holds k values, i + 32 <= k.
            unsafe {
                let p = weights.add((cols[c] * k + i) * 2);
                if MR == 1 {
                    // Decode is bound by memory: ask for the weights a few steps ahead.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                }
                let a = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                let b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(32) as *const __m256i));
                lo[c] = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
                hi[c] = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
            }
        }
        for r in 0..MR {
            // SAFETY: activation row row + r holds k values, i + 32 <= k.
            let (x0, x1) = unsafe {
                (
                    _mm512_loadu_ps(xs.add((row + r) * k + i)),
                    _mm512_loadu_ps(xs.add((row + r) * k + i + 16)),
                )
            };
            for c in 0..NR {
                acc_lo[r][c] = _mm512_fmadd_ps(x0, lo[c], acc_lo[r][c]);
                acc_hi[r][c] = _mm512_fmadd_ps(x1, hi[c], acc_hi[r][c]);
            }
        }
        i += K_STEP;
    }
    for r in 0..MR {
        let xr = &x[(row + r) * k..(row + r + 1) * k];
        for c in 0..NR {
            let tail = w.dot(xr, cols[c], vector_k);
            let sum = _mm512_add_ps(acc_lo[r][c], acc_hi[r][c]);
            // SAFETY: in bounds of the caller's buffer; the column is the caller's.
            unsafe { *out.add((row + r) * n + cols[c]) = _mm512_reduce_add_ps(sum) + tail };
        }
    }
}
