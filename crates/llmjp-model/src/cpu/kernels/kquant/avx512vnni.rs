//! The K-quant matmul on AVX-512 VNNI (x86-64), over an [`InterleavedKQuantMatrix`]: per
//! super-block, `vpdpbusd` multiplies four unsigned values of each of 16 output rows by four
//! broadcast activation bytes (low nibbles, plus Q5_K's fifth bit or Q6_K's bits 4–5 put
//! back in); each sub-block's 16 lanes are weighted by its integer scales (`vpmulld`) into
//! an exact i32 sum, the minimums by the activations' sums (`vpdpwssd`), then both by the
//! super-block scales into 16 f32 lanes: the portable kernel's numbers, bit for bit.

use std::arch::x86_64::*;

use llmjp_weights::kquant::{KQuant, SUPER_BLOCK};

use super::KRows;
use crate::matrix::interleaved::GROUP;
use crate::matrix::InterleavedKQuantMatrix;

/// Output columns `first..first + count` of `x @ w.T` for every activation row; `first` is
/// a multiple of [`GROUP`].
///
/// # Safety
/// The CPU has AVX-512F, BW, VL and VNNI; `x` has `w.cols()` columns; `out` points to a
/// `[x.rows, w.rows()]` buffer nobody else writes in these columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn columns(
    w: &InterleavedKQuantMatrix,
    x: &KRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    debug_assert_eq!(first % GROUP, 0);
    for g in first / GROUP..(first + count).div_ceil(GROUP) {
        let mut r = 0;
        while r < x.rows {
            let mr = (x.rows - r).min(4);
            // SAFETY: forwarded; rows r..r + mr and group g are in bounds.
            unsafe {
                match (w.format(), mr) {
                    (KQuant::Q4K, 4) => tile::<4, 0>(w, x, r, g, out),
                    (KQuant::Q4K, 3) => tile::<3, 0>(w, x, r, g, out),
                    (KQuant::Q4K, 2) => tile::<2, 0>(w, x, r, g, out),
                    (KQuant::Q4K, _) => tile::<1, 0>(w, x, r, g, out),
                    (KQuant::Q5K, 4) => tile::<4, 1>(w, x, r, g, out),
                    (KQuant::Q5K, 3) => tile::<3, 1>(w, x, r, g, out),
                    (KQuant::Q5K, 2) => tile::<2, 1>(w, x, r, g, out),
                    (KQuant::Q5K, _) => tile::<1, 1>(w, x, r, g, out),
                    (KQuant::Q6K, 4) => tile::<4, 2>(w, x, r, g, out),
                    (KQuant::Q6K, 3) => tile::<3, 2>(w, x, r, g, out),
                    (KQuant::Q6K, 2) => tile::<2, 2>(w, x, r, g, out),
                    (KQuant::Q6K, _) => tile::<1, 2>(w, x, r, g, out),
                }
            }
            r += mr;
        }
    }
}

/// Activation rows `row..row + MR` times the 16 weight rows of group `g`, for format `F`
/// (0 Q4_K, 1 Q5_K, 2 Q6_K).
///
/// # Safety
/// The CPU has AVX-512F, BW, VL and VNNI; the rows and the group are in bounds of `x` and
/// `w`; the `[x.rows, w.rows()]` buffer at `out` has the group's columns for the caller
/// alone.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile<const MR: usize, const F: u8>(
    w: &InterleavedKQuantMatrix,
    x: &KRows,
    row: usize,
    g: usize,
    out: *mut f32,
) {
    let (blocks, k, n) = (w.blocks(), x.cols, w.rows());
    let (vb, hb, sb) = w.part_bytes();
    let low4 = _mm512_set1_epi8(0x0f);
    let bit4 = _mm512_set1_epi8(0x10);
    let bits45 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); MR];
    // Every access below is in bounds: the group, the rows and super-block b are (the
    // caller's), and the offsets stay inside their part of the super-block.
    for b in 0..blocks {
        let at = g * blocks + b;
        // SAFETY: see above.
        let (values, high, scales) = unsafe {
            (
                w.values.as_ptr().add(at * vb),
                w.high.as_ptr().add(at * hb),
                w.scales.as_ptr().add(at * sb),
            )
        };
        let xrow: [*const i8; MR] = std::array::from_fn(|r| {
            // SAFETY: see above.
            unsafe { x.values.as_ptr().add((row + r) * k + b * SUPER_BLOCK) }
        });
        // The activations' four bytes at value `i` of the super-block, broadcast.
        let xb = |r: usize, i: usize| {
            // SAFETY: see above.
            _mm512_set1_epi32(unsafe { xrow[r].add(i).cast::<i32>().read_unaligned() })
        };
        let mut isum = [_mm512_setzero_si512(); MR];
        if F < 2 {
            for j in 0..4 {
                let mut lo = [_mm512_setzero_si512(); MR];
                let mut hi = [_mm512_setzero_si512(); MR];
                for u in 8 * j..8 * j + 8 {
                    // SAFETY: see above.
                    let v = unsafe { _mm512_loadu_si512(values.add(64 * u) as *const _) };
                    let mut a = _mm512_and_si512(v, low4);
                    let mut h = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4);
                    if F == 1 {
                        // SAFETY: see above; masks u and u + 32 of 64.
                        let (ma, mh) = unsafe {
                            (
                                high.add(8 * u).cast::<u64>().read_unaligned(),
                                high.add(8 * (u + 32)).cast::<u64>().read_unaligned(),
                            )
                        };
                        a = _mm512_or_si512(a, _mm512_and_si512(_mm512_movm_epi8(ma), bit4));
                        h = _mm512_or_si512(h, _mm512_and_si512(_mm512_movm_epi8(mh), bit4));
                    }
                    for r in 0..MR {
                        lo[r] = _mm512_dpbusd_epi32(lo[r], a, xb(r, 4 * u));
                        hi[r] = _mm512_dpbusd_epi32(hi[r], h, xb(r, 128 + 4 * u));
                    }
                }
                // SAFETY: see above; sub-blocks j and j + 4's 16 scales.
                let (s_lo, s_hi) = unsafe {
                    (
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(scales.add(16 * j) as *const _)),
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(scales.add(16 * (j + 4)) as *const _)),
                    )
                };
                for r in 0..MR {
                    isum[r] = weigh(isum[r], lo[r], hi[r], s_lo, s_hi);
                }
            }
            let mut msum = [_mm512_setzero_si512(); MR];
            for p in 0..4 {
                // SAFETY: see above; the minimums of sub-blocks 2p and 2p + 1.
                let mins = unsafe {
                    _mm512_cvtepu8_epi16(_mm256_loadu_si256(scales.add(128 + 32 * p) as *const _))
                };
                for r in 0..MR {
                    // SAFETY: see above.
                    let sums =
                        unsafe { *x.sum_pairs.get_unchecked(((row + r) * blocks + b) * 4 + p) };
                    msum[r] = _mm512_dpwssd_epi32(msum[r], mins, _mm512_set1_epi32(sums));
                }
            }
            // SAFETY: see above.
            let (dv, dminv) = unsafe {
                (
                    _mm512_loadu_ps(w.d.as_ptr().add(at * GROUP)),
                    _mm512_loadu_ps(w.dmin.as_ptr().add(at * GROUP)),
                )
            };
            for r in 0..MR {
                // SAFETY: see above.
                let dx = _mm512_set1_ps(unsafe { *x.scales.get_unchecked((row + r) * blocks + b) });
                acc[r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dv, dx), acc[r]);
                acc[r] = _mm512_fnmadd_ps(
                    _mm512_cvtepi32_ps(msum[r]),
                    _mm512_mul_ps(dminv, dx),
                    acc[r],
                );
            }
        } else {
            for i in 0..8 {
                let start = |r: usize, s: usize| {
                    // SAFETY: see above.
                    _mm512_set1_epi32(unsafe {
                        *x.starts16.get_unchecked(((row + r) * blocks + b) * 16 + s)
                    })
                };
                let mut lo: [__m512i; MR] = std::array::from_fn(|r| start(r, i));
                let mut hi: [__m512i; MR] = std::array::from_fn(|r| start(r, 8 + i));
                for u in 4 * i..4 * i + 4 {
                    // SAFETY: see above; vector u of 32 and bit vector u % 16 of 16.
                    let (v, bits) = unsafe {
                        (
                            _mm512_loadu_si512(values.add(64 * u) as *const _),
                            _mm512_loadu_si512(high.add(64 * (u % 16)) as *const _),
                        )
                    };
                    // Steps u (bits at 2(u / 16)) and u + 32 (bits at 2(u / 16) + 4).
                    let (top_lo, top_hi) = if u < 16 {
                        (_mm512_slli_epi16::<4>(bits), bits)
                    } else {
                        (_mm512_slli_epi16::<2>(bits), _mm512_srli_epi16::<2>(bits))
                    };
                    let a = _mm512_or_si512(
                        _mm512_and_si512(v, low4),
                        _mm512_and_si512(top_lo, bits45),
                    );
                    let h = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4),
                        _mm512_and_si512(top_hi, bits45),
                    );
                    for r in 0..MR {
                        lo[r] = _mm512_dpbusd_epi32(lo[r], a, xb(r, 4 * u));
                        hi[r] = _mm512_dpbusd_epi32(hi[r], h, xb(r, 128 + 4 * u));
                    }
                }
                // SAFETY: see above; 16-value sub-blocks i and 8 + i's signed scales.
                let (s_lo, s_hi) = unsafe {
                    (
                        _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.add(16 * i) as *const _)),
                        _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.add(16 * (8 + i)) as *const _)),
                    )
                };
                for r in 0..MR {
                    isum[r] = weigh(isum[r], lo[r], hi[r], s_lo, s_hi);
                }
            }
            // SAFETY: see above.
            let dv = unsafe { _mm512_loadu_ps(w.d.as_ptr().add(at * GROUP)) };
            for r in 0..MR {
                // SAFETY: see above.
                let dx = _mm512_set1_ps(unsafe { *x.scales.get_unchecked((row + r) * blocks + b) });
                acc[r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dv, dx), acc[r]);
            }
        }
    }
    let first = g * GROUP;
    let mask: __mmask16 = if first + GROUP <= n {
        !0
    } else {
        (1u16 << (n - first)) - 1
    };
    for r in 0..MR {
        // SAFETY: the group's columns of row row + r, masked to the matrix's rows.
        unsafe { _mm512_mask_storeu_ps(out.add((row + r) * n + first), mask, acc[r]) };
    }
}

/// `isum + lo × s_lo + hi × s_hi` in i32 lanes: two sub-blocks' dots weighted by their
/// scales.
#[target_feature(enable = "avx512f")]
#[inline]
fn weigh(isum: __m512i, lo: __m512i, hi: __m512i, s_lo: __m512i, s_hi: __m512i) -> __m512i {
    let both = _mm512_add_epi32(_mm512_mullo_epi32(lo, s_lo), _mm512_mullo_epi32(hi, s_hi));
    _mm512_add_epi32(isum, both)
}
