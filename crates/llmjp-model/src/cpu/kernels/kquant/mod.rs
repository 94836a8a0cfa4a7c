//! The K-quant matmul: `x @ w.T` for f32 activation rows `x` and an
//! [`InterleavedKQuantMatrix`] `w` (Q4_K, Q5_K, Q6_K), as llama.cpp computes it with its
//! Q8_K activations: each row quantized to 8 bits per super-block of 256 with one f32
//! scale; per super-block, the sub-blocks' integer dot products weighted by their integer
//! scales (and, Q4_K / Q5_K, the minimums by the activations' sums) are summed exactly in
//! i32, then weighted by the two super-block scales into an f32 sum. Q6_K's `q − 32` is
//! folded into each 16-value sub-block's start. The AVX-512 VNNI kernel gives the portable
//! kernel's numbers bit for bit; below VNNI the portable kernel runs (the CPU backend
//! multiplies K-quants as bf16 there instead).

#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod portable;

use llmjp_weights::kquant::SUPER_BLOCK;
use rayon::prelude::*;

use super::isa::Isa;
use super::tasks::in_column_tasks;
use crate::matrix::InterleavedKQuantMatrix;

/// Activation rows quantized to 8 bits per super-block of 256, with what the kernels need
/// of them: each super-block's scale, its 32-value sums in pairs of i16 (for the
/// minimums) and −32 times its 16-value sums (Q6_K's starts).
#[derive(Debug)]
pub(crate) struct KRows {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    /// Per super-block, 4 × (sum of sub-block 2p as the low i16, 2p + 1 as the high).
    sum_pairs: Vec<i32>,
    /// Per super-block, 16 × −32 × (sum of the 16-value sub-block).
    starts16: Vec<i32>,
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
                unsafe { avx512vnni::quantize_row(src, values, scales, pairs, starts) };
                return;
            }
            for (b, src) in src.chunks_exact(SUPER_BLOCK).enumerate() {
                let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                scales[b] = d;
                let q = &mut values[b * SUPER_BLOCK..(b + 1) * SUPER_BLOCK];
                for (q, &v) in q.iter_mut().zip(src) {
                    *q = (v * id).round() as i8;
                }
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
    fn sum32(&self, r: usize, b: usize, j: usize) -> i32 {
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

impl InterleavedKQuantMatrix {
    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`,
    /// the activations quantized per super-block on the way (see the module docs): with
    /// AVX-512 VNNI ([`Isa::Avx512Vnni`] and above) on `vpdpbusd`, 16 outputs at a time;
    /// below it in plain Rust (correct, not fast).
    pub fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        let x = KRows::new(isa, x, rows, k);
        #[cfg(target_arch = "x86_64")]
        if isa.usable() >= Isa::Avx512Vnni {
            return in_column_tasks(rows, n, |first, count, out| {
                // SAFETY: the task owns output columns first..first + count (a multiple of
                // 16 from a multiple of 16) of the `[rows, n]` buffer; the CPU has AVX-512
                // VNNI.
                unsafe { avx512vnni::columns(self, &x, first, count, out.0) }
            });
        }
        in_column_tasks(rows, n, |first, count, out| {
            // SAFETY: the task owns output columns first..first + count of the buffer.
            unsafe { portable::columns(self, &x, first, count, out.0) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::isa::supported;
    use llmjp_weights::kquant::{dequantize, KQuant};

    #[test]
    fn matches_the_dequantized_matmul_and_the_portable_kernel_bit_for_bit() {
        let mut next = crate::testing::uniform(8);
        for format in KQuant::ALL {
            for (rows, n, k) in [
                (1, 16, 256),
                (3, 33, 512),
                (5, 48, 256),
                (9, 17, 768),
                (1, 300, 256),
                (40, 40, 512),
            ] {
                let bytes =
                    llmjp_testdata::gguf::kquant_blocks(format.ggml_type(), (n * k) as u64, 5);
                let w = InterleavedKQuantMatrix::new(format, &bytes, n, k);
                let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                // Against f64 over the dequantized weights and the quantized activations.
                let values = dequantize(format, &bytes).unwrap();
                let xq = KRows::new(Isa::Portable, &x, rows, k);
                for isa in supported("K-quant activations") {
                    let v = KRows::new(isa, &x, rows, k);
                    assert_eq!((&v.values, &v.scales), (&xq.values, &xq.scales), "{isa}");
                    assert_eq!(
                        (&v.sum_pairs, &v.starts16),
                        (&xq.sum_pairs, &xq.starts16),
                        "{isa}"
                    );
                }
                let portable = w.matmul(Isa::Portable, &x, rows);
                for r in 0..rows {
                    for c in 0..n {
                        let exact: f64 = (0..k)
                            .map(|i| {
                                let xv = xq.values[r * k + i] as f64
                                    * xq.scales[r * (k / SUPER_BLOCK) + i / SUPER_BLOCK] as f64;
                                xv * values[c * k + i] as f64
                            })
                            .sum();
                        let ours = portable[r * n + c] as f64;
                        assert!(
                            (ours - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                            "{format} {rows}x{n}x{k} [{r},{c}]: {ours} vs {exact}"
                        );
                    }
                }
                for isa in supported("K-quant matmul") {
                    let ours = w.matmul(isa, &x, rows);
                    assert_eq!(ours, portable, "{format} {isa} {rows}x{n}x{k}");
                    for r in 0..rows {
                        let single = w.matmul(isa, &x[r * k..(r + 1) * k], 1);
                        assert_eq!(single, ours[r * n..(r + 1) * n], "{format} {isa} row {r}");
                    }
                }
            }
        }
    }
}
