//! Activation rows quantized to 8-bit blocks, as the quantized matmul multiplies them.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use llmjp_weights::quant::{BlockFormat, BLOCK};
use rayon::prelude::*;

use crate::cpu::kernels::isa::Isa;
#[cfg(target_arch = "x86_64")]
use crate::cpu::kernels::simd::avx512::round_half_away;

/// Activation rows quantized to 8-bit blocks of 32, each with an f32 scale (GGML's Q8_0
/// rounding, the scale kept in f32).
#[derive(Debug)]
pub(crate) struct QuantizedRows {
    /// Rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Every row's values, row-major.
    pub values: Vec<i8>,
    /// Every row's block scales.
    pub scales: Vec<f32>,
}

/// `src` quantized to 8 bits with one scale, GGML's Q8_0 rounding: the scale
/// `max |v| / 127`, each value times its inverse rounded half away from zero into `out`.
/// Returns the scale. (The AVX-512 quantizers give the same integers and scales.)
pub(crate) fn quantize_i8(src: &[f32], out: &mut [i8]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in out.iter_mut().zip(src) {
        *q = (v * id).round() as i8;
    }
    d
}

impl QuantizedRows {
    pub(crate) fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut values = vec![0i8; x.len()];
        let scales = x
            .chunks_exact(BLOCK)
            .zip(values.chunks_exact_mut(BLOCK))
            .map(|(block, out)| quantize_i8(block, out))
            .collect();
        Self {
            rows,
            cols,
            values,
            scales,
        }
    }

    /// Block `b` of row `r`.
    pub(crate) fn block(&self, r: usize, b: usize) -> &[i8] {
        let start = r * self.cols + b * BLOCK;
        &self.values[start..start + BLOCK]
    }

    /// The scale of block `b` of row `r`.
    pub(crate) fn scale(&self, r: usize, b: usize) -> f32 {
        self.scales[r * (self.cols / BLOCK) + b]
    }
}

/// Activation rows quantized as [`QuantizedRows`] does (the same integers and scales), with
/// each block's starting value for the interleaved kernels of one format: −offset times the
/// block's sum, the offset the weights are stored plus (Q8_0 128, Q4_0 8).
#[derive(Debug)]
pub(crate) struct BlockRows {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub starts: Vec<i32>,
}

/// One row's activations and where its values, scales and starts go.
type RowParts<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [i32]));

impl BlockRows {
    /// `x` (`[rows, k]` row-major f32, `k` whole blocks) for weights of `format`; rows in
    /// parallel, with AVX-512 where `isa` has it.
    pub(crate) fn new(isa: Isa, x: &[f32], rows: usize, k: usize, format: BlockFormat) -> Self {
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
        #[cfg(target_arch = "x86_64")]
        let vector = isa.usable() >= Isa::Avx512Vnni;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        let row = |((src, values), (scales, starts)): RowParts<'_>| {
            #[cfg(target_arch = "x86_64")]
            if vector {
                // SAFETY: `usable` returned an ISA with AVX-512 VNNI; the slices are one row's.
                unsafe { quantize_row_avx512(src, values, scales, starts, offset) };
                return;
            }
            let blocks = src.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK));
            for ((block, q), (scale, start)) in blocks.zip(scales.iter_mut().zip(starts.iter_mut()))
            {
                *scale = quantize_i8(block, q);
                *start = -offset * q.iter().map(|&v| v as i32).sum::<i32>();
            }
        };
        let parts = x.par_chunks(k).zip(out.values.par_chunks_mut(k)).zip(
            out.scales
                .par_chunks_mut(blocks)
                .zip(out.starts.par_chunks_mut(blocks)),
        );
        if rows * k >= 1 << 16 {
            parts.for_each(row);
        } else {
            parts.with_min_len(rows.max(1)).for_each(row);
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn quantize_block(src: *const f32) -> (__m256i, f32) {
    // SAFETY: 32 values at src.
    let (a, b) = unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))) };
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let round = |v: __m512| round_half_away(_mm512_mul_ps(v, id));
    let low = _mm512_cvtepi32_epi8(round(a));
    let high = _mm512_cvtepi32_epi8(round(b));
    (_mm256_set_m128i(high, low), d)
}

/// One row quantized block by block into `values`, `scales` and `starts`.
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `src` and `values` hold `scales.len()` whole
/// blocks, `starts` as many entries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quantize_row_avx512(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::isa::supported;

    #[test]
    fn every_isa_quantizes_the_same_integers_scales_and_starts() {
        let mut next = crate::testing::uniform(5);
        for (rows, k) in [(1, 32), (3, 96), (2, 2048), (5, 160)] {
            let mut x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            // Zeros, a zero block, and a block whose scale is 1: exact ties.
            x[0] = 0.0;
            x[5..10].copy_from_slice(&[127.0, 0.5, -2.5, 1.5, -0.5]);
            if k >= 64 {
                x[32..64].fill(0.0);
            }
            for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
                let reference = BlockRows::new(Isa::Portable, &x, rows, k, format);
                let q = QuantizedRows::new(&x, rows, k);
                assert_eq!(
                    (&reference.values, &reference.scales),
                    (&q.values, &q.scales)
                );
                for isa in supported("block rows") {
                    let ours = BlockRows::new(isa, &x, rows, k, format);
                    assert_eq!(ours.values, reference.values, "{isa} {format}");
                    assert_eq!(ours.scales, reference.scales, "{isa} {format}");
                    assert_eq!(ours.starts, reference.starts, "{isa} {format}");
                }
            }
        }
    }
}
