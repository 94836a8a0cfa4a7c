//! The K-quant matmul with AVX2 (x86-64), over an [`InterleavedKQuantMatrix`]: the AVX-512
//! VNNI kernel's arithmetic on half a group (8 rows, 32 bytes of each vector) at a time,
//! `vpdpbusd` done as `vpmaddubsw` (unsigned values × signed activations, pairs summed in
//! i16: at most 2 × 63 × 127, no saturation) then `vpmaddwd` by ones, `vpdpwssd` as
//! `vpmaddwd` plus an add: exact integer sums, so the portable kernel's numbers bit for bit.

use std::arch::x86_64::*;

use llmjp_weights::kquant::{KQuant, SUPER_BLOCK};

use super::KRows;
use crate::matrix::interleaved::GROUP;
use crate::matrix::InterleavedKQuantMatrix;

/// Rows of a group one pass covers.
const HALF: usize = GROUP / 2;

/// Output columns `first..first + count` of `x @ w.T` for every activation row; `first` is
/// a multiple of [`GROUP`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x` has `w.cols()` columns; `out` points to a
/// `[x.rows, w.rows()]` buffer nobody else writes in these columns.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns(
    w: &InterleavedKQuantMatrix,
    x: &KRows,
    first: usize,
    count: usize,
    out: *mut f32,
) {
    debug_assert_eq!(first % GROUP, 0);
    let n = w.rows();
    for g in first / GROUP..(first + count).div_ceil(GROUP) {
        for h in 0..2 {
            if g * GROUP + h * HALF >= n {
                break;
            }
            let mut r = 0;
            while r < x.rows {
                let two = r + 1 < x.rows;
                // SAFETY: forwarded; rows r..r + 2 (or r) and half h of group g are in bounds.
                unsafe {
                    match (w.format(), two) {
                        (KQuant::Q4K, true) => tile::<2, 0>(w, x, r, g, h, out),
                        (KQuant::Q4K, false) => tile::<1, 0>(w, x, r, g, h, out),
                        (KQuant::Q5K, true) => tile::<2, 1>(w, x, r, g, h, out),
                        (KQuant::Q5K, false) => tile::<1, 1>(w, x, r, g, h, out),
                        (KQuant::Q6K, true) => tile::<2, 2>(w, x, r, g, h, out),
                        (KQuant::Q6K, false) => tile::<1, 2>(w, x, r, g, h, out),
                    }
                }
                r += if two { 2 } else { 1 };
            }
        }
    }
}

/// `acc + Σ` of four products `w × x` per i32 lane (`w` unsigned ≤ 63, `x` signed).
#[target_feature(enable = "avx2")]
#[inline]
fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The 32 bits `mask` as 32 bytes, 0x10 where a bit is set (Q5_K's fifth bits).
#[target_feature(enable = "avx2")]
#[inline]
fn fifth_bits(mask: u32) -> __m256i {
    // Byte i takes byte i / 8 of the mask, then tests bit i % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(mask as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Activation rows `row..row + MR` times rows `8h..8h + 8` of group `g`, for format `F`
/// (0 Q4_K, 1 Q5_K, 2 Q6_K).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the rows and the group are in bounds of `x` and `w`;
/// the `[x.rows, w.rows()]` buffer at `out` has the group's columns for the caller alone.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<const MR: usize, const F: u8>(
    w: &InterleavedKQuantMatrix,
    x: &KRows,
    row: usize,
    g: usize,
    h: usize,
    out: *mut f32,
) {
    let (blocks, k, n) = (w.blocks(), x.cols, w.rows());
    let (vb, hb, sb) = w.part_bytes();
    let low4 = _mm256_set1_epi8(0x0f);
    let bits45 = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); MR];
    // Every access below is in bounds: the group, the rows and super-block b are (the
    // caller's), and the offsets stay inside their part of the super-block.
    for b in 0..blocks {
        let at = g * blocks + b;
        // SAFETY: see above; half h of each 64-byte vector starts 32h bytes in.
        let (values, high, scales) = unsafe {
            (
                w.values.as_ptr().add(at * vb + 32 * h),
                w.high.as_ptr().add(at * hb),
                w.scales.as_ptr().add(at * sb),
            )
        };
        let xrow: [*const i8; MR] = std::array::from_fn(|r| {
            // SAFETY: see above.
            unsafe { x.values.as_ptr().add((row + r) * k + b * SUPER_BLOCK) }
        });
        let xb = |r: usize, i: usize| {
            // SAFETY: see above.
            _mm256_set1_epi32(unsafe { xrow[r].add(i).cast::<i32>().read_unaligned() })
        };
        let mut isum = [_mm256_setzero_si256(); MR];
        if F < 2 {
            for j in 0..4 {
                let mut lo = [_mm256_setzero_si256(); MR];
                let mut hi = [_mm256_setzero_si256(); MR];
                for u in 8 * j..8 * j + 8 {
                    // SAFETY: see above.
                    let v = unsafe { _mm256_loadu_si256(values.add(64 * u) as *const __m256i) };
                    let mut a = _mm256_and_si256(v, low4);
                    let mut c = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
                    if F == 1 {
                        // SAFETY: see above; masks u and u + 32, this half's 32 bits.
                        let (ma, mh) = unsafe {
                            (
                                high.add(8 * u + 4 * h).cast::<u32>().read_unaligned(),
                                high.add(8 * (u + 32) + 4 * h)
                                    .cast::<u32>()
                                    .read_unaligned(),
                            )
                        };
                        a = _mm256_or_si256(a, fifth_bits(ma));
                        c = _mm256_or_si256(c, fifth_bits(mh));
                    }
                    for r in 0..MR {
                        lo[r] = dot(lo[r], a, xb(r, 4 * u));
                        hi[r] = dot(hi[r], c, xb(r, 128 + 4 * u));
                    }
                }
                // SAFETY: see above; this half's 8 scales of sub-blocks j and j + 4.
                let (s_lo, s_hi) = unsafe {
                    (
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            scales.add(16 * j + HALF * h) as *const _
                        )),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            scales.add(16 * (j + 4) + HALF * h) as *const _
                        )),
                    )
                };
                for r in 0..MR {
                    isum[r] = weigh(isum[r], lo[r], hi[r], s_lo, s_hi);
                }
            }
            let mut msum = [_mm256_setzero_si256(); MR];
            for p in 0..4 {
                // SAFETY: see above; this half's minimums of sub-blocks 2p and 2p + 1.
                let mins = unsafe {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        scales.add(128 + 32 * p + 2 * HALF * h) as *const _
                    ))
                };
                for r in 0..MR {
                    // SAFETY: see above.
                    let sums =
                        unsafe { *x.sum_pairs.get_unchecked(((row + r) * blocks + b) * 4 + p) };
                    let products = _mm256_madd_epi16(mins, _mm256_set1_epi32(sums));
                    msum[r] = _mm256_add_epi32(msum[r], products);
                }
            }
            // SAFETY: see above.
            let (dv, dminv) = unsafe {
                (
                    _mm256_loadu_ps(w.d.as_ptr().add(at * GROUP + HALF * h)),
                    _mm256_loadu_ps(w.dmin.as_ptr().add(at * GROUP + HALF * h)),
                )
            };
            for r in 0..MR {
                // SAFETY: see above.
                let dx = _mm256_set1_ps(unsafe { *x.scales.get_unchecked((row + r) * blocks + b) });
                acc[r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(dv, dx), acc[r]);
                acc[r] = _mm256_fnmadd_ps(
                    _mm256_cvtepi32_ps(msum[r]),
                    _mm256_mul_ps(dminv, dx),
                    acc[r],
                );
            }
        } else {
            for i in 0..8 {
                let start = |r: usize, s: usize| {
                    // SAFETY: see above.
                    _mm256_set1_epi32(unsafe {
                        *x.starts16.get_unchecked(((row + r) * blocks + b) * 16 + s)
                    })
                };
                let mut lo: [__m256i; MR] = std::array::from_fn(|r| start(r, i));
                let mut hi: [__m256i; MR] = std::array::from_fn(|r| start(r, 8 + i));
                for u in 4 * i..4 * i + 4 {
                    // SAFETY: see above; vector u of 32 and bit vector u % 16 of 16, this half.
                    let (v, bits) = unsafe {
                        (
                            _mm256_loadu_si256(values.add(64 * u) as *const __m256i),
                            _mm256_loadu_si256(high.add(64 * (u % 16) + 32 * h) as *const __m256i),
                        )
                    };
                    let (top_lo, top_hi) = if u < 16 {
                        (_mm256_slli_epi16::<4>(bits), bits)
                    } else {
                        (_mm256_slli_epi16::<2>(bits), _mm256_srli_epi16::<2>(bits))
                    };
                    let a = _mm256_or_si256(
                        _mm256_and_si256(v, low4),
                        _mm256_and_si256(top_lo, bits45),
                    );
                    let c = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4),
                        _mm256_and_si256(top_hi, bits45),
                    );
                    for r in 0..MR {
                        lo[r] = dot(lo[r], a, xb(r, 4 * u));
                        hi[r] = dot(hi[r], c, xb(r, 128 + 4 * u));
                    }
                }
                // SAFETY: see above; this half's signed scales of sub-blocks i and 8 + i.
                let (s_lo, s_hi) = unsafe {
                    (
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            scales.add(16 * i + HALF * h) as *const _
                        )),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            scales.add(16 * (8 + i) + HALF * h) as *const _
                        )),
                    )
                };
                for r in 0..MR {
                    isum[r] = weigh(isum[r], lo[r], hi[r], s_lo, s_hi);
                }
            }
            // SAFETY: see above.
            let dv = unsafe { _mm256_loadu_ps(w.d.as_ptr().add(at * GROUP + HALF * h)) };
            for r in 0..MR {
                // SAFETY: see above.
                let dx = _mm256_set1_ps(unsafe { *x.scales.get_unchecked((row + r) * blocks + b) });
                acc[r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(dv, dx), acc[r]);
            }
        }
    }
    let first = g * GROUP + HALF * h;
    let valid = (n - first).min(HALF);
    for r in 0..MR {
        let mut lanes = [0f32; HALF];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
        for (c, &v) in lanes[..valid].iter().enumerate() {
            // SAFETY: this half's columns of row row + r, within the matrix's rows.
            unsafe { *out.add((row + r) * n + first + c) = v };
        }
    }
}

/// `isum + lo × s_lo + hi × s_hi` in i32 lanes: two sub-blocks' dots weighted by their
/// scales.
#[target_feature(enable = "avx2")]
#[inline]
fn weigh(isum: __m256i, lo: __m256i, hi: __m256i, s_lo: __m256i, s_hi: __m256i) -> __m256i {
    let both = _mm256_add_epi32(_mm256_mullo_epi32(lo, s_lo), _mm256_mullo_epi32(hi, s_hi));
    _mm256_add_epi32(isum, both)
}
