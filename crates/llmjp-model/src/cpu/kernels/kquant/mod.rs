//! The K-quant matmul: `x @ w.T` for f32 activation rows `x` and an
//! [`InterleavedKQuantMatrix`] `w` (Q4_K, Q5_K, Q6_K), as llama.cpp computes it with its
//! Q8_K activations: each row quantized to 8 bits per super-block of 256 with one f32
//! scale; per super-block, the sub-blocks' integer dot products weighted by their integer
//! scales (and, Q4_K / Q5_K, the minimums by the activations' sums) are summed exactly in
//! i32, then weighted by the two super-block scales into an f32 sum. Q6_K's `q − 32` is
//! folded into each 16-value sub-block's start. The AVX-512 VNNI and AVX2 kernels give the
//! portable kernel's numbers bit for bit.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod portable;
mod rows;

use rows::KRows;

use super::isa::Isa;
use super::tasks::in_column_tasks;
use crate::matrix::InterleavedKQuantMatrix;

impl InterleavedKQuantMatrix {
    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`,
    /// the activations quantized per super-block on the way (see the module docs): with
    /// AVX-512 VNNI ([`Isa::Avx512Vnni`] and above) on `vpdpbusd`, 16 outputs at a time;
    /// with AVX2 on `vpmaddubsw`, 8 at a time; else in plain Rust (correct, not fast).
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
        #[cfg(target_arch = "x86_64")]
        if isa.usable() >= Isa::Avx2 {
            return in_column_tasks(rows, n, |first, count, out| {
                // SAFETY: as above; the CPU has AVX2, FMA and F16C.
                unsafe { avx2::columns(self, &x, first, count, out.0) }
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
    use llmjp_weights::kquant::{dequantize, KQuant, SUPER_BLOCK};

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
