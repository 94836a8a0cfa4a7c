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
use rayon::prelude::*;

use crate::cpu::kernels::tasks::in_four_streams;
use crate::matrix::interleaved::{InterleavedQuantMatrix, GROUP};

/// Activation rows quantized as [`QuantizedRows`](super::rows::QuantizedRows) does (the
/// same integers and scales), with each block's starting value for weights of one format.
pub(crate) struct VnniRows {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    starts: Vec<i32>,
}

/// One row's activations and where its values, scales and starts go.
type RowParts<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [i32]));

impl VnniRows {
    /// `x` (`[rows, k]` row-major f32, `k` whole blocks) for weights of `format`; rows in
    /// parallel.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI.
    pub(crate) unsafe fn new(x: &[f32], rows: usize, k: usize, format: BlockFormat) -> Self {
        let blocks = k / BLOCK;
        let offset = match format {
            BlockFormat::Q8_0 => 128,
            BlockFormat::Q4_0 => 8,
        };
        let mut out = Self {
            rows,
            cols: k,
            values: vec![0i8; rows * k],
            scales: vec![0f32; rows * blocks],
            starts: vec![0i32; rows * blocks],
        };
        let row = |((src, values), (scales, starts)): RowParts<'_>| {
            // SAFETY: the CPU has AVX-512 VNNI (the caller's contract); the slices are one
            // row's.
            unsafe { quantize_row(src, values, scales, starts, offset) }
        };
        if rows * k >= 1 << 16 {
            x.par_chunks(k)
                .zip(out.values.par_chunks_mut(k))
                .zip(
                    out.scales
                        .par_chunks_mut(blocks)
                        .zip(out.starts.par_chunks_mut(blocks)),
                )
                .for_each(row);
        } else {
            x.chunks(k)
                .zip(out.values.chunks_mut(k))
                .zip(
                    out.scales
                        .chunks_mut(blocks)
                        .zip(out.starts.chunks_mut(blocks)),
                )
                .for_each(row);
        }
        out
    }
}

/// Block `src` (32 values) quantized to 8 bits as [`QuantizedRows`] does: the scale
/// `max |v| / 127`, each value times its inverse rounded half away from zero (as
/// `f32::round`). Returns the values as 32 signed bytes and the scale.
///
/// # Safety
/// The CPU has AVX-512F and BW; `src` points to 32 values.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn quantize_block(src: *const f32) -> (__m256i, f32) {
    // SAFETY: 32 values at src.
    let (a, b) = unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))) };
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let round = |v: __m512| {
        let y = _mm512_mul_ps(v, id);
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let half = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
            _mm512_abs_ps(_mm512_sub_ps(y, t)),
            _mm512_set1_ps(0.5),
        );
        let sign = _mm512_and_ps(y, _mm512_set1_ps(-0.0));
        let away = _mm512_or_ps(_mm512_set1_ps(1.0), sign);
        _mm512_cvttps_epi32(_mm512_mask_add_ps(t, half, t, away))
    };
    let low = _mm512_cvtepi32_epi8(round(a));
    let high = _mm512_cvtepi32_epi8(round(b));
    (_mm256_set_m128i(high, low), d)
}

/// One row quantized block by block into `values`, `scales` and `starts`.
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `src` and `values` hold `scales.len()` whole
/// blocks, `starts` as many entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quantize_row(
    src: &[f32],
    values: &mut [i8],
    scales: &mut [f32],
    starts: &mut [i32],
    offset: i32,
) {
    for b in 0..scales.len() {
        // SAFETY: block b of the row is in bounds.
        let (q, d) = unsafe { quantize_block(src.as_ptr().add(b * BLOCK)) };
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(values.as_mut_ptr().add(b * BLOCK) as *mut __m256i, q) };
        let sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), q);
        let sum = _mm512_reduce_add_epi32(_mm512_castsi256_si512(sum));
        scales[b] = d;
        starts[b] = -offset * sum;
    }
}

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
    x: &VnniRows,
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
    x: &VnniRows,
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
    x: &VnniRows,
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
