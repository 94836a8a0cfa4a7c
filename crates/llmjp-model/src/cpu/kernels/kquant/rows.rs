//! K-quant activations: rows quantized to 8 bits per super-block of 256, as llama.cpp's
//! Q8_K, with the sums the kernels need.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use llmjp_weights::kquant::SUPER_BLOCK;
use rayon::prelude::*;

use crate::cpu::kernels::isa::Isa;
use crate::cpu::kernels::quant::quantize_i8;
#[cfg(target_arch = "x86_64")]
use crate::cpu::kernels::simd::avx512::round_half_away;

/// Activation rows quantized to 8 bits per super-block of 256, with what the kernels need
/// of them: each super-block's scale, its 32-value sums in pairs of i16 (for the
/// minimums) and −32 times its 16-value sums (Q6_K's starts).
#[derive(Debug)]
pub(crate) struct KRows {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) values: Vec<i8>,
    pub(super) scales: Vec<f32>,
    /// Per super-block, 4 × (sum of sub-block 2p as the low i16, 2p + 1 as the high).
    pub(super) sum_pairs: Vec<i32>,
    /// Per super-block, 16 × −32 × (sum of the 16-value sub-block).
    pub(super) starts16: Vec<i32>,
}

impl KRows {
    /// `x` (`[rows, k]`, `k` a multiple of 256) quantized row by row (rows in parallel):
    /// the scale `max |v| / 127` of each super-block, each value times its inverse rounded
    /// half away from zero.
    pub(crate) fn new(isa: Isa, x: &[f32], rows: usize, k: usize) -> Self {
        let blocks = k / SUPER_BLOCK;
        let mut out = Self {
            rows,
            cols: k,
            values: vec![0; rows * k],
            scales: vec![0.0; rows * blocks],
            sum_pairs: vec![0; rows * blocks * 4],
            starts16: vec![0; rows * blocks * 16],
        };
        #[cfg(target_arch = "x86_64")]
        let vector = isa.usable() >= Isa::Avx512Vnni;
        let row = |(((src, values), scales), (pairs, starts)): RowParts<'_>| {
            #[cfg(target_arch = "x86_64")]
            if vector {
                // SAFETY: `usable` returned an ISA with AVX-512; the slices are one row's.
                unsafe { quantize_row_avx512(src, values, scales, pairs, starts) };
                return;
            }
            for (b, src) in src.chunks_exact(SUPER_BLOCK).enumerate() {
                let q = &mut values[b * SUPER_BLOCK..(b + 1) * SUPER_BLOCK];
                scales[b] = quantize_i8(src, q);
                let sum =
                    |range: std::ops::Range<usize>| q[range].iter().map(|&v| v as i32).sum::<i32>();
                for p in 0..4 {
                    let (a, c) = (sum(64 * p..64 * p + 32), sum(64 * p + 32..64 * p + 64));
                    pairs[4 * b + p] =
                        (a as i16 as u16 as u32 | ((c as i16 as u16 as u32) << 16)) as i32;
                }
                for s in 0..16 {
                    starts[16 * b + s] = -32 * sum(16 * s..16 * s + 16);
                }
            }
        };
        let parts = x
            .par_chunks(k)
            .zip(out.values.par_chunks_mut(k))
            .zip(out.scales.par_chunks_mut(blocks))
            .zip(
                out.sum_pairs
                    .par_chunks_mut(4 * blocks)
                    .zip(out.starts16.par_chunks_mut(16 * blocks)),
            );
        if rows * k >= 1 << 16 {
            parts.for_each(row);
        } else {
            parts.with_min_len(rows.max(1)).for_each(row);
        }
        out
    }

    /// Sum of the 32 values of sub-block `j` of super-block `b` of row `r`.
    pub(super) fn sum32(&self, r: usize, b: usize, j: usize) -> i32 {
        let pair = self.sum_pairs[(r * self.cols / SUPER_BLOCK + b) * 4 + j / 2] as u32;
        (if j.is_multiple_of(2) {
            pair as u16
        } else {
            (pair >> 16) as u16
        }) as i16 as i32
    }
}

/// One row's activations and where its values, scales and sums go.
type RowParts<'a> = (
    ((&'a [f32], &'a mut [i8]), &'a mut [f32]),
    (&'a mut [i32], &'a mut [i32]),
);

/// One row of activations quantized as [`KRows::new`] does it in plain Rust (the same
/// integers, scales and sums).
///
/// # Safety
/// The CPU has AVX-512F and BW; `src` holds whole super-blocks, the other slices one entry
/// (values: one byte; pairs: 4; starts: 16) per value or super-block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(
    src: &[f32],
    values: &mut [i8],
    scales: &mut [f32],
    pairs: &mut [i32],
    starts: &mut [i32],
) {
    for (b, block) in src.chunks_exact(SUPER_BLOCK).enumerate() {
        let p = block.as_ptr();
        let mut amax = _mm512_setzero_ps();
        for i in 0..16 {
            // SAFETY: 16 values of the super-block.
            amax = _mm512_max_ps(
                amax,
                _mm512_abs_ps(unsafe { _mm512_loadu_ps(p.add(16 * i)) }),
            );
        }
        let d = _mm512_reduce_max_ps(amax) / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        scales[b] = d;
        let mut sums = [0i32; 16];
        for (i, sum) in sums.iter_mut().enumerate() {
            // SAFETY: as above.
            let y = _mm512_mul_ps(unsafe { _mm512_loadu_ps(p.add(16 * i)) }, id);
            let q = round_half_away(y);
            *sum = _mm512_reduce_add_epi32(q);
            let at = b * SUPER_BLOCK + 16 * i;
            // SAFETY: 16 bytes of the row's values.
            unsafe {
                _mm_storeu_si128(
                    values.as_mut_ptr().add(at) as *mut __m128i,
                    _mm512_cvtepi32_epi8(q),
                )
            };
        }
        for (s, &sum) in sums.iter().enumerate() {
            starts[16 * b + s] = -32 * sum;
        }
        for q in 0..4 {
            let (a, c) = (
                sums[4 * q] + sums[4 * q + 1],
                sums[4 * q + 2] + sums[4 * q + 3],
            );
            pairs[4 * b + q] = (a as i16 as u16 as u32 | ((c as i16 as u16 as u32) << 16)) as i32;
        }
    }
}
