//! The quantized matmul on AVX-512 VNNI (x86-64): `vpdpbusd` multiplies 64 unsigned by
//! 64 signed bytes and adds each four products into one of 16 i32 lanes, exactly, in one
//! instruction: two blocks of 32 at a time, lanes 0–7 one block's and 8–15 the other's (Q4_0
//! in another fixed lane order). Each pair's lanes are converted to f32 and weighted by
//! both scales, pair after pair, into 16 f32 lanes added up at the end.
//!
//! The unsigned operand: Q8_0 multiplies the activations plus 128 by the signed weights and
//! starts each lane from −128 times the sum of its weights; Q4_0 multiplies its unsigned
//! nibbles by the signed activations and starts each lane from −8 times the sum of its
//! activations. Both give the integer dot products of the AVX2 and portable kernels.

use std::arch::x86_64::*;

use llmjp_weights::quant::{BlockFormat, BLOCK};
use rayon::prelude::*;

#[cfg(test)]
use super::rows::QuantizedRows;
use crate::cpu::kernels::tasks::in_four_streams;
use crate::matrix::QuantMatrix;

/// Bytes of a pair of blocks of activations.
const PAIR: usize = 2 * BLOCK;

/// How far ahead (in pairs of blocks) the decode kernel prefetches a row's values.
const PREFETCH_PAIRS: usize = 8;

/// Activation rows laid out for the kernel of one format, pairs of blocks at a time: 64
/// bytes of values, 16 f32 scales matching their lanes, and (Q4_0) 16 i32 lanes to start
/// the dot products from. A row of an odd number of blocks ends in a zero block.
pub(crate) struct VnniRows {
    rows: usize,
    pairs: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
    starts: Vec<i32>,
}

impl VnniRows {
    /// `x` (`[rows, k]` row-major f32, `k` whole blocks) quantized as
    /// [`QuantizedRows`] does (the same integers and scales), laid out for weights of
    /// `format`; rows in parallel.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI.
    pub(crate) unsafe fn new(x: &[f32], rows: usize, k: usize, format: BlockFormat) -> Self {
        let blocks = k / BLOCK;
        let pairs = blocks.div_ceil(2);
        let q4 = format == BlockFormat::Q4_0;
        let mut out = Self {
            rows,
            pairs,
            values: vec![0u8; rows * pairs * PAIR],
            scales: vec![0f32; rows * pairs * 16],
            starts: vec![0i32; if q4 { rows * pairs * 16 } else { 0 }],
        };
        let parts = RowParts {
            values: out.values.as_mut_ptr(),
            scales: out.scales.as_mut_ptr(),
            starts: out.starts.as_mut_ptr(),
        };
        let row = |r: usize| {
            let parts = &parts;
            // SAFETY: row r of each buffer is this call's alone; the CPU has AVX-512 VNNI.
            unsafe {
                if q4 {
                    quantize_row::<true>(&x[r * k..(r + 1) * k], r, pairs, parts)
                } else {
                    quantize_row::<false>(&x[r * k..(r + 1) * k], r, pairs, parts)
                }
            }
        };
        if rows * k >= 1 << 16 {
            (0..rows).into_par_iter().for_each(row);
        } else {
            (0..rows).for_each(row);
        }
        out
    }

    /// The layout built value by value from [`QuantizedRows`], the reference for
    /// [`new`](Self::new).
    #[cfg(test)]
    fn from_quantized(x: &QuantizedRows, format: BlockFormat) -> Self {
        let blocks = x.cols / BLOCK;
        let pairs = blocks.div_ceil(2);
        let mut values = vec![0u8; x.rows * pairs * PAIR];
        let mut scales = vec![0f32; x.rows * pairs * 16];
        let q4 = format == BlockFormat::Q4_0;
        let mut starts = vec![0i32; if q4 { x.rows * pairs * 16 } else { 0 }];
        for r in 0..x.rows {
            for p in 0..pairs {
                let at = r * pairs + p;
                let dst = &mut values[at * PAIR..(at + 1) * PAIR];
                let lanes = &mut scales[at * 16..(at + 1) * 16];
                for half in 0..2 {
                    let b = 2 * p + half;
                    let (block, scale) = if b < blocks {
                        (x.block(r, b), x.scale(r, b))
                    } else {
                        (&[0i8; BLOCK][..], 0.0)
                    };
                    if q4 {
                        // 128-bit lanes: block b's values 0..16, b + 1's 0..16, b's 16..32,
                        // b + 1's 16..32 (the order the nibbles unpack in).
                        for (part, values) in block.chunks_exact(16).enumerate() {
                            let lane = 2 * part + half;
                            for (i, &v) in values.iter().enumerate() {
                                dst[lane * 16 + i] = v as u8;
                            }
                            lanes[lane * 4..lane * 4 + 4].fill(scale);
                            for (j, four) in values.chunks_exact(4).enumerate() {
                                let sum: i32 = four.iter().map(|&v| v as i32).sum();
                                starts[at * 16 + lane * 4 + j] = -8 * sum;
                            }
                        }
                    } else {
                        for (i, &v) in block.iter().enumerate() {
                            dst[half * BLOCK + i] = (v as u8) ^ 0x80;
                        }
                        lanes[half * 8..half * 8 + 8].fill(scale);
                    }
                }
            }
        }
        Self {
            rows: x.rows,
            pairs,
            values,
            scales,
            starts,
        }
    }
}

/// The buffers of a [`VnniRows`] being filled, a row per task.
struct RowParts {
    values: *mut u8,
    scales: *mut f32,
    starts: *mut i32,
}
// SAFETY: each task writes only its own row of the three buffers.
unsafe impl Sync for RowParts {}

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

/// Row `r` of `x` into its part of `parts`, in the layout of [`VnniRows`].
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `src` holds whole blocks, `pairs` of them per two;
/// row `r` of `parts` is the caller's alone and (Q4_0) `parts.starts` has rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quantize_row<const Q4: bool>(src: &[f32], r: usize, pairs: usize, parts: &RowParts) {
    let blocks = src.len() / BLOCK;
    for p in 0..pairs {
        let at = r * pairs + p;
        let mut halves = [_mm256_setzero_si256(); 2];
        let mut scales = [0f32; 2];
        for half in 0..2 {
            let b = 2 * p + half;
            if b < blocks {
                // SAFETY: block b of the row is in bounds.
                (halves[half], scales[half]) =
                    unsafe { quantize_block(src.as_ptr().add(b * BLOCK)) };
            }
        }
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(halves[0]), halves[1]);
        let (s0, s1) = (_mm512_set1_ps(scales[0]), _mm512_set1_ps(scales[1]));
        // SAFETY: pair p of row r is inside the buffers (the caller's row).
        unsafe {
            if Q4 {
                // 128-bit lanes: block 2p's values 0..16, 2p + 1's 0..16, 2p's 16..32,
                // 2p + 1's 16..32 (the order the weights' nibbles unpack in).
                let values = _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both);
                _mm512_storeu_si512(parts.values.add(at * PAIR) as *mut _, values);
                let lanes = _mm512_mask_blend_ps(0xf0f0, s0, s1);
                _mm512_storeu_ps(parts.scales.add(at * 16), lanes);
                // −8 × the sum of each lane's four activations.
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), values);
                let starts = _mm512_sub_epi32(_mm512_setzero_si512(), sums);
                _mm512_storeu_si512(parts.starts.add(at * 16) as *mut _, starts);
            } else {
                let values = _mm512_xor_si512(both, _mm512_set1_epi8(0x80u8 as i8));
                _mm512_storeu_si512(parts.values.add(at * PAIR) as *mut _, values);
                let lanes = _mm512_mask_blend_ps(0xff00, s0, s1);
                _mm512_storeu_ps(parts.scales.add(at * 16), lanes);
            }
        }
    }
}

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// The CPU has AVX-512F, BW, VL and VNNI; `x` was made for `w`'s format and columns;
/// `out` points to a `[x.rows, w.rows()]` buffer nobody else writes in these columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub(crate) unsafe fn columns(
    w: &QuantMatrix,
    x: &VnniRows,
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
    let end = first + count;
    let mut c = first;
    while c < end {
        let nr = (end - c).min(TILE_COLS);
        let mut r = 0;
        while r < x.rows {
            let mr = (x.rows - r).min(TILE_ROWS);
            // SAFETY: forwarded; rows r..r + mr and columns c..c + nr are in bounds.
            unsafe {
                match nr {
                    4 => tile_rows::<4>(w, x, r, mr, [c, c + 1, c + 2, c + 3], out),
                    3 => tile_rows::<3>(w, x, r, mr, [c, c + 1, c + 2], out),
                    2 => tile_rows::<2>(w, x, r, mr, [c, c + 1], out),
                    _ => tile_rows::<1>(w, x, r, mr, [c], out),
                }
            }
            r += mr;
        }
        c += nr;
    }
}

/// Activation rows and weight rows of a prefill's tile.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 4;

/// [`tile`] for `mr` (1 to [`TILE_ROWS`]) activation rows.
///
/// # Safety
/// As [`tile_of`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[inline]
unsafe fn tile_rows<const NR: usize>(
    w: &QuantMatrix,
    x: &VnniRows,
    row: usize,
    mr: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match mr {
            8 => tile::<8, NR>(w, x, row, cols, out),
            7 => tile::<7, NR>(w, x, row, cols, out),
            6 => tile::<6, NR>(w, x, row, cols, out),
            5 => tile::<5, NR>(w, x, row, cols, out),
            4 => tile::<4, NR>(w, x, row, cols, out),
            3 => tile::<3, NR>(w, x, row, cols, out),
            2 => tile::<2, NR>(w, x, row, cols, out),
            _ => tile::<1, NR>(w, x, row, cols, out),
        }
    }
}

/// [`tile_of`] dispatched on the format.
///
/// # Safety
/// As [`tile_of`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[inline]
unsafe fn tile<const MR: usize, const NR: usize>(
    w: &QuantMatrix,
    x: &VnniRows,
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

/// A pair of weight blocks `2p, 2p + 1` of the row at `row` as 64 bytes in the lane order
/// of the activations (the second block zero if the row has an odd number and this is the
/// last pair): Q8_0 as stored (signed), Q4_0 its nibbles (unsigned).
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `row` points to a row of `blocks` whole blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn weight_pair<const Q4: bool>(
    row: *const u8,
    p: usize,
    blocks: usize,
    prefetch: bool,
) -> __m512i {
    let size = if Q4 { BLOCK / 2 } else { BLOCK };
    // SAFETY: block 2p is within the row (the caller's bounds).
    let at = unsafe { row.add(2 * p * size) };
    if prefetch {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_PAIRS * 2 * size) as *const i8);
    }
    let whole = 2 * p + 1 < blocks;
    if Q4 {
        // SAFETY: 32 bytes of the pair, or the 16 of a last single block.
        let raw = unsafe {
            if whole {
                _mm256_loadu_si256(at as *const __m256i)
            } else {
                _mm256_maskz_loadu_epi8(0xffff, at as *const i8)
            }
        };
        // Low nibbles of both blocks in the lower 256 bits, high nibbles in the upper.
        let both = _mm512_broadcast_i64x4(raw);
        let shifted = _mm512_srlv_epi64(both, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0));
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f))
    } else {
        // SAFETY: 64 bytes of the pair, or the 32 of a last single block.
        unsafe {
            if whole {
                _mm512_loadu_si512(at as *const _)
            } else {
                _mm512_maskz_loadu_epi8(0xffff_ffff, at as *const i8)
            }
        }
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`. Each output sums its pairs in
/// order in 16 lanes and adds the lanes in a fixed order, whatever the tile, so one row at a
/// time gives the same numbers as many.
///
/// # Safety
/// The CPU has AVX-512F, BW, VL, VNNI and F16C; `x` was made for this format; the rows
/// and columns named are in bounds of `x`, `w` and the `[x.rows, w.rows()]` buffer at
/// `out`, whose columns `cols` are the caller's.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
#[inline]
unsafe fn tile_of<const MR: usize, const NR: usize, const Q4: bool>(
    w: &QuantMatrix,
    x: &VnniRows,
    row: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    let blocks = w.blocks();
    let row_bytes = blocks * if Q4 { BLOCK / 2 } else { BLOCK };
    let data = w.data().as_ptr();
    let pairs = x.pairs;
    // SAFETY: row cols[c] starts inside w's values (the caller's bounds).
    let w_rows: [*const u8; NR] = std::array::from_fn(|c| unsafe { data.add(cols[c] * row_bytes) });
    let (xv_ptr, xs_ptr, starts) = (x.values.as_ptr(), x.scales.as_ptr(), x.starts.as_ptr());
    let offset = _mm512_set1_epi8(0x80u8 as i8);
    // The f16 scales of weight blocks 2p and 2p + 1 widened to the lanes of a pair.
    let scale_lanes = if Q4 {
        _mm256_set_epi16(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
    } else {
        _mm256_set_epi16(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    };
    let scale_bits = w.scale_bytes().as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for p in 0..pairs {
        let mut wv = [_mm512_setzero_si512(); NR];
        let mut ws = [_mm512_setzero_ps(); NR];
        let mut start = [_mm512_setzero_si512(); NR];
        for c in 0..NR {
            // SAFETY: row cols[c] has `blocks` blocks, pair p is among them.
            unsafe {
                wv[c] = weight_pair::<Q4>(w_rows[c], p, blocks, MR == 1);
                let at = scale_bits.add(2 * (cols[c] * blocks + 2 * p));
                let bits = if 2 * p + 1 < blocks {
                    at.cast::<u32>().read_unaligned()
                } else {
                    // A last single block: its scale and zero.
                    at.cast::<u16>().read_unaligned() as u32
                };
                let both = _mm256_castsi128_si256(_mm_cvtsi32_si128(bits as i32));
                ws[c] = _mm512_cvtph_ps(_mm256_permutexvar_epi16(scale_lanes, both));
            }
            if !Q4 {
                // −128 × the sum of each lane's four weights.
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, wv[c]);
                start[c] = _mm512_sub_epi32(_mm512_setzero_si512(), sums);
            }
        }
        for r in 0..MR {
            let at = (row + r) * pairs + p;
            // SAFETY: pair p of activation row row + r is in bounds of `x`.
            let (xv, xs) = unsafe {
                (
                    _mm512_loadu_si512(xv_ptr.add(at * PAIR) as *const _),
                    _mm512_loadu_ps(xs_ptr.add(at * 16)),
                )
            };
            let row_start = if Q4 {
                // SAFETY: as above (Q4_0 rows have starts).
                unsafe { _mm512_loadu_si512(starts.add(at * 16) as *const _) }
            } else {
                _mm512_setzero_si512()
            };
            for c in 0..NR {
                let dots = if Q4 {
                    _mm512_dpbusd_epi32(row_start, wv[c], xv)
                } else {
                    _mm512_dpbusd_epi32(start[c], xv, wv[c])
                };
                let scale = _mm512_mul_ps(ws[c], xs);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[r][c]);
            }
        }
    }
    let n = w.rows();
    for r in 0..MR {
        for c in 0..NR {
            // SAFETY: in bounds of the caller's buffer; the column is the caller's.
            unsafe { *out.add((row + r) * n + cols[c]) = _mm512_reduce_add_ps(acc[r][c]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_quantize_as_the_reference_does() {
        if !crate::cpu::Isa::Avx512Vnni.is_supported() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut next = crate::testing::uniform(5);
        for (rows, k) in [(1, 32), (3, 96), (2, 2048), (5, 160)] {
            let mut x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            // Ties, zeros, a zero block and a value at the largest magnitude.
            x[0] = 0.0;
            // A block whose scale is 1: exact ties, rounded away from zero.
            x[5..10].copy_from_slice(&[127.0, 0.5, -2.5, 1.5, -0.5]);
            if k >= 64 {
                x[32..64].fill(0.0);
            }
            x[k - 1] = 2.5;
            x[k - 2] = -1.25;
            for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
                // SAFETY: checked above that the CPU has AVX-512 VNNI.
                let ours = unsafe { VnniRows::new(&x, rows, k, format) };
                let reference = VnniRows::from_quantized(&QuantizedRows::new(&x, rows, k), format);
                assert_eq!(ours.values, reference.values, "{format} {rows}x{k}");
                assert_eq!(ours.scales, reference.scales, "{format} {rows}x{k}");
                assert_eq!(ours.starts, reference.starts, "{format} {rows}x{k}");
            }
        }
    }
}
