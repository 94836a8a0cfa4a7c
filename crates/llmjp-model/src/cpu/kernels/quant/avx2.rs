//! The quantized matmul with AVX2 and FMA: 32 signed 8-bit products per block summed
//! exactly in i32 lanes (`vpmaddubsw` on |w| and x signed by w, then `vpmaddwd`), the
//! lanes converted to f32 and weighted by the two scales. AVX-512 CPUs run it too.

use std::arch::x86_64::*;

use llmjp_weights::quant::{BlockFormat, BLOCK};

use super::rows::QuantizedRows;
use crate::cpu::kernels::simd::avx2::horizontal_sum;
use crate::cpu::kernels::tasks::in_four_streams;
use crate::matrix::QuantMatrix;

/// How far ahead (in blocks) the decode kernel prefetches a row's values.
const PREFETCH_BLOCKS: usize = 16;

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `out` points to a `[x.rows, w.rows()]` buffer nobody
/// else writes in these columns.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn columns(
    w: &QuantMatrix,
    x: &QuantizedRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    if x.rows == 1 {
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
    let mut r = 0;
    while r < x.rows {
        let mr = (x.rows - r).min(4);
        let mut c = first;
        while c < first + count {
            // SAFETY: forwarded; rows r..r + mr and the columns named are in bounds.
            unsafe {
                if c + 1 < first + count {
                    match mr {
                        4 => tile::<4, 2>(w, x, r, [c, c + 1], out),
                        3 => tile::<3, 2>(w, x, r, [c, c + 1], out),
                        2 => tile::<2, 2>(w, x, r, [c, c + 1], out),
                        _ => tile::<1, 2>(w, x, r, [c, c + 1], out),
                    }
                    c += 2;
                } else {
                    match mr {
                        4 => tile::<4, 1>(w, x, r, [c], out),
                        3 => tile::<3, 1>(w, x, r, [c], out),
                        2 => tile::<2, 1>(w, x, r, [c], out),
                        _ => tile::<1, 1>(w, x, r, [c], out),
                    }
                    c += 1;
                }
            }
        }
        r += mr;
    }
}

/// Blocks whose scales are combined at once (one f16 load and conversion per 8).
const SCALE_GROUP: usize = 8;

/// Block `b` of a weight row at `row` as 32 signed bytes: Q8_0 as stored, Q4_0 unpacked
/// (low nibbles first) and centred.
///
/// # Safety
/// The CPU has AVX2; `row` points to a row of whole blocks, `b` one of them.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weight_block<const Q4: bool>(row: *const u8, b: usize, prefetch: bool) -> __m256i {
    let size = if Q4 { BLOCK / 2 } else { BLOCK };
    // SAFETY: block b is within the row (the caller's bounds).
    let p = unsafe { row.add(b * size) };
    if prefetch {
        let ahead = p.wrapping_add(PREFETCH_BLOCKS * size);
        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
    }
    if Q4 {
        // SAFETY: 16 bytes of the block.
        let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let mask = _mm_set1_epi8(0x0f);
        let low = _mm_and_si128(raw, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
        _mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8))
    } else {
        // SAFETY: 32 bytes of the block.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`, dispatched on the format.
///
/// # Safety
/// As [`tile_of`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const MR: usize, const NR: usize>(
    w: &QuantMatrix,
    x: &QuantizedRows,
    row: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match w.format() {
            BlockFormat::Q8_0 => tile_of::<MR, NR, false>(w, x, row, cols, out),
            BlockFormat::Q4_0 => tile_of::<MR, NR, true>(w, x, row, cols, out),
        }
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`. Each output sums its
/// blocks in order in 8 lanes and adds the lanes in a fixed order, whatever the tile,
/// so one row at a time gives the same numbers as many.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the rows and columns named are in bounds of `x`,
/// `w` and the `[x.rows, w.rows()]` buffer at `out`, whose columns `cols` are the
/// caller's.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile_of<const MR: usize, const NR: usize, const Q4: bool>(
    w: &QuantMatrix,
    x: &QuantizedRows,
    row: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    let (blocks, k) = (w.blocks(), w.cols());
    let row_bytes = blocks * if Q4 { BLOCK / 2 } else { BLOCK };
    let data = w.data().as_ptr();
    let scales = w.scale_bytes().as_ptr();
    let (xq, xs) = (x.values.as_ptr(), x.scales.as_ptr());
    // Rows cols[c] of w and row + r of x are in bounds (the caller's contract), and every
    // block index below stays below `blocks`: each pointer below is inside its buffer.
    // SAFETY: row cols[c] starts inside w's values.
    let w_rows: [*const u8; NR] = std::array::from_fn(|c| unsafe { data.add(cols[c] * row_bytes) });
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    // The scale products of a group of blocks, broadcast from memory as each is used.
    let mut combined = [[[0f32; SCALE_GROUP]; NR]; MR];
    let mut b = 0;
    while b < blocks {
        let group = SCALE_GROUP.min(blocks - b);
        if group == SCALE_GROUP {
            for c in 0..NR {
                // SAFETY: 8 scales of row cols[c] from block b (a whole group) are in bounds.
                let ws = unsafe {
                    _mm256_cvtph_ps(_mm_loadu_si128(
                        scales.add(2 * (cols[c] * blocks + b)) as *const __m128i
                    ))
                };
                for r in 0..MR {
                    // SAFETY: 8 scales of activation row row + r from block b are in bounds.
                    let xv = unsafe { _mm256_loadu_ps(xs.add((row + r) * blocks + b)) };
                    let product = _mm256_mul_ps(ws, xv);
                    // SAFETY: `combined[r][c]` holds SCALE_GROUP = 8 floats.
                    unsafe { _mm256_storeu_ps(combined[r][c].as_mut_ptr(), product) };
                }
            }
        } else {
            for c in 0..NR {
                for j in 0..group {
                    let d = w.scale(cols[c], b + j);
                    for r in 0..MR {
                        combined[r][c][j] = d * x.scale(row + r, b + j);
                    }
                }
            }
        }
        for j in 0..group {
            for c in 0..NR {
                // SAFETY: block b + j of row cols[c] is in bounds; the CPU has AVX2.
                let values = unsafe { weight_block::<Q4>(w_rows[c], b + j, MR == 1) };
                let magnitudes = _mm256_sign_epi8(values, values);
                for r in 0..MR {
                    // SAFETY: block b + j of activation row row + r holds 32 bytes.
                    let xv = unsafe {
                        _mm256_loadu_si256(xq.add((row + r) * k + (b + j) * BLOCK) as *const __m256i)
                    };
                    let pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(xv, values));
                    let dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    // SAFETY: j < group <= SCALE_GROUP, inside `combined[r][c]`.
                    let scale = unsafe { _mm256_broadcast_ss(&*combined[r][c].as_ptr().add(j)) };
                    acc[r][c] = _mm256_fmadd_ps(dots, scale, acc[r][c]);
                }
            }
        }
        b += group;
    }
    let n = w.rows();
    for r in 0..MR {
        for c in 0..NR {
            let sum = horizontal_sum(acc[r][c]);
            // SAFETY: in bounds of the caller's buffer; the column is the caller's.
            unsafe { *out.add((row + r) * n + cols[c]) = sum };
        }
    }
}
