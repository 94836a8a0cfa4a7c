//! The quantized matmul with AVX2 (x86-64) over an [`InterleavedQuantMatrix`]: the AVX-512
//! VNNI kernel's arithmetic on half a group (8 rows, 32 bytes of each vector) at a time.
//! Q4_0's unsigned nibbles go through `vpmaddubsw` (pairs at most 2 × 15 × 127, no
//! saturation) and `vpmaddwd` by ones; Q8_0's values, stored plus 128, are put back signed
//! and multiplied as |w| by x signed like w (pairs at most 2 × 128 × 127). Exact integer
//! dots, then the scales as the portable kernel applies them: its numbers bit for bit.

use std::arch::x86_64::*;

use llmjp_weights::quant::{BlockFormat, BLOCK};

use super::rows::BlockRows;
use crate::matrix::interleaved::GROUP;
use crate::matrix::InterleavedQuantMatrix;

/// Rows of a group one pass covers.
const HALF: usize = GROUP / 2;

/// Output columns `first..first + count` of `x @ w.T` for every activation row; `first` is
/// a multiple of [`GROUP`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x` was made for `w`'s format and columns; `out` points
/// to a `[x.rows, w.rows()]` buffer nobody else writes in these columns.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns(
    w: &InterleavedQuantMatrix,
    x: &BlockRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    debug_assert_eq!(first % GROUP, 0);
    let n = w.rows();
    for g in first / GROUP..(first + count).div_ceil(GROUP) {
        if x.rows == 1 {
            // Decode: both halves in one pass, each vector read whole, in order.
            // SAFETY: forwarded; row 0 and group g are in bounds.
            unsafe {
                match w.format() {
                    BlockFormat::Q8_0 => tile::<1, 2, false>(w, x, 0, g, 0, out),
                    BlockFormat::Q4_0 => tile::<1, 2, true>(w, x, 0, g, 0, out),
                }
            }
            continue;
        }
        for h in 0..2 {
            if g * GROUP + h * HALF >= n {
                break;
            }
            let mut r = 0;
            while r < x.rows {
                let mr = (x.rows - r).min(4);
                // SAFETY: forwarded; rows r..r + mr and half h of group g are in bounds.
                unsafe {
                    match (w.format(), mr) {
                        (BlockFormat::Q8_0, 4) => tile::<4, 1, false>(w, x, r, g, h, out),
                        (BlockFormat::Q8_0, 3) => tile::<3, 1, false>(w, x, r, g, h, out),
                        (BlockFormat::Q8_0, 2) => tile::<2, 1, false>(w, x, r, g, h, out),
                        (BlockFormat::Q8_0, _) => tile::<1, 1, false>(w, x, r, g, h, out),
                        (BlockFormat::Q4_0, 4) => tile::<4, 1, true>(w, x, r, g, h, out),
                        (BlockFormat::Q4_0, 3) => tile::<3, 1, true>(w, x, r, g, h, out),
                        (BlockFormat::Q4_0, 2) => tile::<2, 1, true>(w, x, r, g, h, out),
                        (BlockFormat::Q4_0, _) => tile::<1, 1, true>(w, x, r, g, h, out),
                    }
                }
                r += mr;
            }
        }
    }
}

/// Activation rows `row..row + MR` times the rows of `NH` halves of group `g` from half
/// `h0` (rows `8h..8h + 8` each).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x` was made for this format; the rows and the group are
/// in bounds of `x` and `w`; the `[x.rows, w.rows()]` buffer at `out` has the group's
/// columns for the caller alone.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const MR: usize, const NH: usize, const Q4: bool>(
    w: &InterleavedQuantMatrix,
    x: &BlockRows,
    row: usize,
    g: usize,
    h0: usize,
    out: *mut f32,
) {
    let (blocks, k, n) = (w.blocks(), x.cols, w.rows());
    let group_block = w.group_block_bytes();
    let ones = _mm256_set1_epi16(1);
    let low4 = _mm256_set1_epi8(0x0f);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let mut acc = [[_mm256_setzero_ps(); NH]; MR];
    // Every access below is in bounds: the group, the rows and block b are (the caller's).
    for b in 0..blocks {
        // SAFETY: see above; half h of each 64-byte vector starts 32h bytes in.
        let values = unsafe {
            w.data()
                .as_ptr()
                .add((g * blocks + b) * group_block + 32 * h0)
        };
        let xb = |r: usize, i: usize| {
            // SAFETY: see above; 4 bytes inside the row's block.
            _mm256_set1_epi32(unsafe {
                x.values
                    .as_ptr()
                    .add((row + r) * k + b * BLOCK + i)
                    .cast::<i32>()
                    .read_unaligned()
            })
        };
        let mut dots = [[_mm256_setzero_si256(); NH]; MR];
        if Q4 {
            for r in 0..MR {
                // SAFETY: see above.
                let start =
                    _mm256_set1_epi32(unsafe { *x.starts.get_unchecked((row + r) * blocks + b) });
                dots[r] = [start; NH];
            }
            for j in 0..4 {
                for hh in 0..NH {
                    // SAFETY: see above; this half of vector j of the group's block.
                    let v = unsafe {
                        _mm256_loadu_si256(values.add(64 * j + 32 * hh) as *const __m256i)
                    };
                    let lo = _mm256_and_si256(v, low4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
                    for r in 0..MR {
                        let a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xb(r, 4 * j)), ones);
                        let c =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb(r, 16 + 4 * j)), ones);
                        dots[r][hh] = _mm256_add_epi32(dots[r][hh], _mm256_add_epi32(a, c));
                    }
                }
            }
        } else {
            for j in 0..8 {
                for hh in 0..NH {
                    // SAFETY: see above; this half of vector j of the group's block.
                    let v = unsafe {
                        _mm256_loadu_si256(values.add(64 * j + 32 * hh) as *const __m256i)
                    };
                    let signed = _mm256_xor_si256(v, flip);
                    let magnitude = _mm256_sign_epi8(signed, signed);
                    for r in 0..MR {
                        let xs = _mm256_sign_epi8(xb(r, 4 * j), signed);
                        let a = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, xs), ones);
                        dots[r][hh] = _mm256_add_epi32(dots[r][hh], a);
                    }
                }
            }
        }
        for hh in 0..NH {
            // SAFETY: see above; this half's 8 f16 scales of block b.
            let ws = _mm256_cvtph_ps(unsafe {
                _mm_loadu_si128(
                    w.scale_bits()
                        .as_ptr()
                        .add((g * blocks + b) * GROUP + HALF * (h0 + hh))
                        as *const _,
                )
            });
            for r in 0..MR {
                // SAFETY: see above.
                let d = _mm256_set1_ps(unsafe { *x.scales.get_unchecked((row + r) * blocks + b) });
                acc[r][hh] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(dots[r][hh]),
                    _mm256_mul_ps(ws, d),
                    acc[r][hh],
                );
            }
        }
    }
    for hh in 0..NH {
        let first = g * GROUP + HALF * (h0 + hh);
        let valid = n.saturating_sub(first).min(HALF);
        for r in 0..MR {
            let mut lanes = [0f32; HALF];
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][hh]) };
            for (c, &v) in lanes[..valid].iter().enumerate() {
                // SAFETY: this half's columns of row row + r, within the matrix's rows.
                unsafe { *out.add((row + r) * n + first + c) = v };
            }
        }
    }
}
