//! The bf16 matmul on AVX-512 BF16's dot product (x86-64): activations rounded to bf16
//! once per call, then `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16 f32
//! lanes in one instruction, twice the work of an f32 FMA and no widening of the weights.
//! bf16 × bf16 products are exact in f32; what differs from the f32 kernels is the
//! rounding of the activations to bf16, as transformers' bf16 models compute.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::super::tasks::in_four_streams;
use crate::matrix::Bf16Matrix;

/// k values per step: 32 bf16, one 64-byte cache line of a weight row.
const K_STEP: usize = 32;

/// How far ahead the decode kernel prefetches weights.
const PREFETCH_BYTES: usize = 1024;

/// Activation rows rounded to bf16 (to nearest, ties to even; `vcvtne2ps2bf16`, which
/// reads subnormal inputs as zero), each padded with zeros to whole steps of [`K_STEP`].
pub(crate) struct Bf16Rows {
    /// Values per padded row.
    stride: usize,
    bits: Vec<u16>,
}

impl Bf16Rows {
    /// `x` is `[rows, k]` row-major f32; rows in parallel when there are many values.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and BF16.
    pub(crate) unsafe fn new(x: &[f32], rows: usize, k: usize) -> Self {
        let stride = k.div_ceil(K_STEP) * K_STEP;
        let mut bits = vec![0u16; rows * stride];
        // SAFETY: the CPU has AVX-512 BF16 (the caller's contract).
        let row = |(src, dst): (&[f32], &mut [u16])| unsafe { round_row(src, dst) };
        if rows * k >= 1 << 16 {
            x.par_chunks(k)
                .zip(bits.par_chunks_mut(stride))
                .for_each(row);
        } else {
            x.chunks(k).zip(bits.chunks_mut(stride)).for_each(row);
        }
        Self { stride, bits }
    }
}

/// One row of f32 into bf16 bit patterns, 32 at a time (`dst` at least as long as `src`,
/// rounded up to 32; the tail of the last step is zero).
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    let k = src.len();
    let mut i = 0;
    while i < k {
        let left = k - i;
        let (lo_mask, hi_mask): (__mmask16, __mmask16) = if left >= 32 {
            (!0, !0)
        } else if left > 16 {
            (!0, (1u16 << (left - 16)) - 1)
        } else {
            (((1u32 << left) - 1) as u16, 0)
        };
        // SAFETY: the masks keep the loads inside `src`; 32 values of `dst` from i are in
        // bounds (its length is a multiple of 32 at least `k`).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lo_mask, src.as_ptr().add(i));
            let hi = _mm512_maskz_loadu_ps(hi_mask, src.as_ptr().add(i + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut _, packed);
        }
        i += K_STEP;
    }
}

/// Output columns `first..first + count` of `x @ w.T` for every activation row.
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16; `x` holds `rows` rows of `w.cols()` values; `out`
/// points to a `[rows, w.rows()]` buffer nobody else writes in these columns.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn columns(
    w: &Bf16Matrix,
    x: &Bf16Rows,
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
    let end = first + count;
    let mut c = first;
    while c < end {
        let nr = (end - c).min(4);
        let mut r = 0;
        while r < rows {
            let mr = (rows - r).min(4);
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

/// [`tile`] for `mr` (1 to 4) activation rows.
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn tile_rows<const NR: usize>(
    w: &Bf16Matrix,
    x: &Bf16Rows,
    row: usize,
    mr: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match mr {
            4 => tile::<4, NR>(w, x, row, cols, out),
            3 => tile::<3, NR>(w, x, row, cols, out),
            2 => tile::<2, NR>(w, x, row, cols, out),
            _ => tile::<1, NR>(w, x, row, cols, out),
        }
    }
}

/// Activation rows `row..row + MR` times weight rows `cols`. Each output accumulates its
/// steps in order in one chain of 16 lanes, added up in a fixed order, whatever the tile:
/// one row at a time gives the same numbers as many.
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16; the rows and columns named are in bounds of `x`,
/// `w` and the `[rows, w.rows()]` buffer at `out`, whose columns `cols` are the caller's.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn tile<const MR: usize, const NR: usize>(
    w: &Bf16Matrix,
    x: &Bf16Rows,
    row: usize,
    cols: [usize; NR],
    out: *mut f32,
) {
    let (n, k) = (w.rows(), w.cols());
    let weights = w.bytes().as_ptr();
    let xs = x.bits.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut i = 0;
    while i < k {
        // The last step of a row not a multiple of 32 long reads only its own values
        // (the activations are zero-padded).
        let mask: __mmask32 = if k - i >= K_STEP {
            !0
        } else {
            (1u32 << (k - i)) - 1
        };
        let mut wv = [_mm512_setzero_si512(); NR];
        for c in 0..NR {
            // SAFETY: row cols[c] holds k values; the mask keeps the load inside it.
            unsafe {
                let p = weights.add((cols[c] * k + i) * 2);
                if MR == 1 {
                    // Decode is bound by memory: ask for the weights a few steps ahead.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
                }
                wv[c] = _mm512_maskz_loadu_epi16(mask, p as *const i16);
            }
        }
        for r in 0..MR {
            // SAFETY: padded row row + r holds `stride` >= i + 32 values.
            let xv =
                as_bh(unsafe { _mm512_loadu_si512(xs.add((row + r) * x.stride + i) as *const _) });
            for c in 0..NR {
                acc[r][c] = _mm512_dpbf16_ps(acc[r][c], xv, as_bh(wv[c]));
            }
        }
        i += K_STEP;
    }
    for r in 0..MR {
        for c in 0..NR {
            // SAFETY: in bounds of the caller's buffer; the column is the caller's.
            unsafe { *out.add((row + r) * n + cols[c]) = _mm512_reduce_add_ps(acc[r][c]) };
        }
    }
}

/// 32 bf16 bit patterns as the dot product's operand type.
#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits; every bit pattern is a valid value of each.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
