//! The bf16 matmul with AVX2 and FMA (x86-64 CPUs without AVX-512: AMD EPYC and Ryzen
//! before Zen 4, Intel before Skylake-X).

use std::arch::x86_64::*;

use super::super::tasks::in_four_streams;
use crate::cpu::kernels::simd::avx2::horizontal_sum;
use crate::matrix::Bf16Matrix;

/// k values per step: 16 bf16, half a cache line of a weight row.
const K_STEP: usize = 16;

/// How far ahead the decode kernel prefetches weights.
const PREFETCH_BYTES: usize = 1024;

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// The CPU has AVX2 and FMA; `out` points to a `[rows, w.rows()]` buffer nobody else
/// writes in these columns.
#[target_feature(enable = "avx2,fma")]
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
    // More rows: each widened weight step serves 4 activation rows; blocks of 4 rows
    // (in L1) run against the task's weight rows (in L2) in turn.
    let mut r = 0;
    while r < rows {
        let mr = (rows - r).min(4);
        for c in first..first + count {
            // SAFETY: forwarded; rows r..r + mr and column c are in bounds.
            unsafe {
                match mr {
                    4 => tile::<4, 1>(w, x, r, [c], out),
                    3 => tile::<3, 1>(w, x, r, [c], out),
                    2 => tile::<2, 1>(w, x, r, [c], out),
                    _ => tile::<1, 1>(w, x, r, [c], out),
                }
            }
        }
        r += mr;
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`. Each output accumulates
/// the two halves of a step in two chains, in the same order whatever the tile, so one
/// row at a time gives the same numbers as many.
///
/// # Safety
/// The CPU has AVX2 and FMA; the rows and columns named are in bounds of `x`, `w` and
/// the `[rows, w.rows()]` buffer at `out`, whose columns `cols` are the caller's.
// Indexing the register tile by row and column reads clearer than iterators here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma")]
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
    let mut acc_lo = [[_mm256_setzero_ps(); NR]; MR];
    let mut acc_hi = [[_mm256_setzero_ps(); NR]; MR];
    let mut i = 0;
    while i < vector_k {
        for c in 0..NR {
            // SAFETY: row cols[c] holds k values, i + 16 <= k.
            let (lo, hi) = unsafe {
                let p = weights.add((cols[c] * k + i) * 2);
                if MR == 1 {
                    // Decode is bound by memory: ask for the weights a few steps ahead.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                }
                let v = _mm256_loadu_si256(p as *const __m256i);
                let a = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(v));
                let b = _mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(v));
                (
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(a)),
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)),
                )
            };
            for r in 0..MR {
                // SAFETY: activation row row + r holds k values, i + 16 <= k.
                let (x0, x1) = unsafe {
                    (
                        _mm256_loadu_ps(xs.add((row + r) * k + i)),
                        _mm256_loadu_ps(xs.add((row + r) * k + i + 8)),
                    )
                };
                acc_lo[r][c] = _mm256_fmadd_ps(x0, lo, acc_lo[r][c]);
                acc_hi[r][c] = _mm256_fmadd_ps(x1, hi, acc_hi[r][c]);
            }
        }
        i += K_STEP;
    }
    for r in 0..MR {
        let xr = &x[(row + r) * k..(row + r + 1) * k];
        for c in 0..NR {
            let tail = w.dot(xr, cols[c], vector_k);
            let sum = horizontal_sum(_mm256_add_ps(acc_lo[r][c], acc_hi[r][c]));
            // SAFETY: in bounds of the caller's buffer; the column is the caller's.
            unsafe { *out.add((row + r) * n + cols[c]) = sum + tail };
        }
    }
}
