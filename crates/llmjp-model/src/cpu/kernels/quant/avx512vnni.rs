//! The quantized matmul on AVX-512 VNNI (x86-64), over an [`InterleavedQuantMatrix`]:
//! `vpdpbusd` multiplies four unsigned weight bytes of each of 16 output features by four
//! signed activation bytes broadcast to all of them, adding the products into the
//! features' 16 i32 lanes, exactly. Eight such steps (Q4_0: four vectors, low and high
//! nibbles) make a block's integer dot products for 16 features at once; they are converted
//! to f32 and weighted by both scales into 16 f32 lanes, block after block — the portable
//! kernel's arithmetic in the same order, so the same numbers bit for bit. No horizontal
//! sums: the lanes are the outputs.
//!
//! The weights are stored plus an offset (Q8_0 128, Q4_0 8, see
//! [`InterleavedQuantMatrix`]): each block's lanes start from −offset times the sum of the
//! block's activations.

use std::arch::x86_64::*;

use llmjp_weights::quant::{BlockFormat, BLOCK};

use super::rows::BlockRows;
use crate::cpu::kernels::tasks::in_four_streams;
use crate::matrix::interleaved::{InterleavedQuantMatrix, GROUP};

/// Output columns `first..first + count` of `x @ w.T` for every activation row; `first` is
/// a multiple of [`GROUP`].
///
/// # Safety
/// The CPU has AVX-512F, BW, VL, VNNI and F16C; `x` was made for `w`'s format and
/// columns; `out` points to a `[x.rows, w.rows()]` buffer nobody else writes in these
/// columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn columns(
    w: &InterleavedQuantMatrix,
    x: &BlockRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    debug_assert_eq!(first % GROUP, 0);
    let (g0, groups) = (first / GROUP, count.div_ceil(GROUP));
    if x.rows == 1 {
        in_four_streams(
            g0,
            groups,
            // SAFETY: forwarded; every group named is in bounds.
            |streams| unsafe { tile::<1, 4>(w, x, 0, streams, out) },
            // SAFETY: as above.
            |g| unsafe { tile::<1, 1>(w, x, 0, [g], out) },
        );
        return;
    }
    let end = g0 + groups;
    let mut g = g0;
    while g < end {
        let two = g + 1 < end;
        let mut r = 0;
        while r < x.rows {
            let mr = (x.rows - r).min(4);
            // SAFETY: forwarded; rows r..r + mr and the groups named are in bounds.
            unsafe {
                match (mr, two) {
                    (4, true) => tile::<4, 2>(w, x, r, [g, g + 1], out),
                    (3, true) => tile::<3, 2>(w, x, r, [g, g + 1], out),
                    (2, true) => tile::<2, 2>(w, x, r, [g, g + 1], out),
                    (_, true) => tile::<1, 2>(w, x, r, [g, g + 1], out),
                    (4, false) => tile::<4, 1>(w, x, r, [g], out),
                    (3, false) => tile::<3, 1>(w, x, r, [g], out),
                    (2, false) => tile::<2, 1>(w, x, r, [g], out),
                    (_, false) => tile::<1, 1>(w, x, r, [g], out),
                }
            }
            r += mr;
        }
        g += if two { 2 } else { 1 };
    }
}

/// [`tile_of`] dispatched on the format.
///
/// # Safety
/// As [`tile_of`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[inline]
unsafe fn tile<const MR: usize, const NG: usize>(
    w: &InterleavedQuantMatrix,
    x: &BlockRows,
    row: usize,
    groups: [usize; NG],
    out: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match w.format() {
            BlockFormat::Q8_0 => tile_of::<MR, NG, false>(w, x, row, groups, out),
            BlockFormat::Q4_0 => tile_of::<MR, NG, true>(w, x, row, groups, out),
        }
    }
}

/// How far ahead (bytes) the decode kernel prefetches a group's values.
const PREFETCH_BYTES: usize = 2048;

/// Activation rows `row..row + MR` times the 16 weight rows of each of `groups`.
///
/// # Safety
/// The CPU has AVX-512F, BW, VL, VNNI and F16C; `x` was made for this format; the rows
/// and groups named are in bounds of `x` and `w`; the `[x.rows, w.rows()]` buffer at `out`
/// has these groups' columns for the caller alone.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[inline]
unsafe fn tile_of<const MR: usize, const NG: usize, const Q4: bool>(
    w: &InterleavedQuantMatrix,
    x: &BlockRows,
    row: usize,
    groups: [usize; NG],
    out: *mut f32,
) {
    let (blocks, k, n) = (w.blocks(), x.cols, w.rows());
    let group_block = w.group_block_bytes();
    let data = w.data().as_ptr();
    let scale_bits = w.scale_bits().as_ptr();
    let (xq, xs, starts) = (x.values.as_ptr(), x.scales.as_ptr(), x.starts.as_ptr());
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); NG]; MR];
    for b in 0..blocks {
        // Every access below is in bounds: the groups, rows and block b are (the caller's).
        let w_at: [*const u8; NG] = std::array::from_fn(|g| {
            // SAFETY: see above.
            unsafe { data.add((groups[g] * blocks + b) * group_block) }
        });
        let mut dots = [[_mm512_setzero_si512(); NG]; MR];
        for r in 0..MR {
            // SAFETY: see above.
            let start = _mm512_set1_epi32(unsafe { *starts.add((row + r) * blocks + b) });
            dots[r] = [start; NG];
        }
        // The activations' four bytes at input `i` of the block, broadcast.
        let xb = |r: usize, i: usize| {
            // SAFETY: see above; 4 bytes inside the row's block.
            _mm512_set1_epi32(unsafe {
                xq.add((row + r) * k + b * BLOCK + i)
                    .cast::<i32>()
                    .read_unaligned()
            })
        };
        if Q4 {
            for j in 0..4 {
                for g in 0..NG {
                    // SAFETY: see above; vector j of the group's block.
                    let v = unsafe { _mm512_loadu_si512(w_at[g].add(64 * j) as *const _) };
                    if MR == 1 {
                        _mm_prefetch::<_MM_HINT_T0>(
                            w_at[g].wrapping_add(PREFETCH_BYTES + 64 * j) as *const i8
                        );
                    }
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    for r in 0..MR {
                        dots[r][g] = _mm512_dpbusd_epi32(dots[r][g], lo, xb(r, 4 * j));
                        dots[r][g] = _mm512_dpbusd_epi32(dots[r][g], hi, xb(r, 16 + 4 * j));
                    }
                }
            }
        } else {
            for j in 0..8 {
                for g in 0..NG {
                    // SAFETY: see above; vector j of the group's block.
                    let v = unsafe { _mm512_loadu_si512(w_at[g].add(64 * j) as *const _) };
                    if MR == 1 {
                        _mm_prefetch::<_MM_HINT_T0>(
                            w_at[g].wrapping_add(PREFETCH_BYTES + 64 * j) as *const i8
                        );
                    }
                    for r in 0..MR {
                        dots[r][g] = _mm512_dpbusd_epi32(dots[r][g], v, xb(r, 4 * j));
                    }
                }
            }
        }
        for g in 0..NG {
            // SAFETY: see above; the group's 16 scales of block b.
            let ws = _mm512_cvtph_ps(unsafe {
                _mm256_loadu_si256(
                    scale_bits.add((groups[g] * blocks + b) * GROUP) as *const __m256i
                )
            });
            for r in 0..MR {
                // SAFETY: see above.
                let d = _mm512_set1_ps(unsafe { *xs.add((row + r) * blocks + b) });
                acc[r][g] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(dots[r][g]),
                    _mm512_mul_ps(ws, d),
                    acc[r][g],
                );
            }
        }
    }
    for g in 0..NG {
        let first = groups[g] * GROUP;
        let mask: __mmask16 = if first + GROUP <= n {
            !0
        } else {
            (1u16 << (n - first)) - 1
        };
        for r in 0..MR {
            // SAFETY: the group's columns of row row + r, masked to the matrix's rows.
            unsafe { _mm512_mask_storeu_ps(out.add((row + r) * n + first), mask, acc[r][g]) };
        }
    }
}
