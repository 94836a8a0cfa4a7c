//! The quantized matmul: `x @ w.T` for f32 activation rows `x` and a [`QuantMatrix`] `w`
//! (Q8_0 / Q4_0), as llama.cpp computes it: activations are quantized to 8-bit blocks of 32
//! with an f32 scale per block (one pass per call), each block's integer dot product is
//! exact in i32, and the products of the two scales weight them into an f32 sum. A row's
//! outputs do not depend on the other rows of the call, so decode and prefill agree.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_interleaved;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod portable;
mod rows;

pub(crate) use rows::quantize_i8;
use rows::{BlockRows, QuantizedRows};

use super::isa::Isa;
use super::tasks::{in_column_tasks, SendPtr};
use crate::matrix::{InterleavedQuantMatrix, QuantMatrix};

impl QuantMatrix {
    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`,
    /// the activations quantized to 8-bit blocks on the way (see the module docs). The
    /// 8-bit dot-product instructions (AVX-512 VNNI) run on the repacked
    /// [`InterleavedQuantMatrix`]; here they run the AVX2 kernel.
    pub fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        let x = QuantizedRows::new(x, rows, k);
        let isa = isa.usable();
        in_column_tasks(rows, n, |first, count, out| {
            // SAFETY: the task owns output columns first..first + count of the `[rows, n]`
            // buffer; `isa` is one the CPU has.
            unsafe { self.columns(isa, &x, first, count, out) }
        })
    }

    /// Output columns `first..first + count` for every activation row.
    ///
    /// # Safety
    /// `out` points to a `[x.rows, self.rows]` buffer nobody else writes in these columns,
    /// and the CPU runs `isa`.
    unsafe fn columns(
        &self,
        isa: Isa,
        x: &QuantizedRows,
        first: usize,
        count: usize,
        out: SendPtr,
    ) {
        match isa {
            // SAFETY: forwarded; AVX-512 CPUs have AVX2.
            #[cfg(target_arch = "x86_64")]
            isa if isa >= Isa::Avx2 => unsafe { avx2::columns(self, x, first, count, out.0) },
            // SAFETY: forwarded.
            _ => unsafe { portable::columns(self, x, first, count, out.0) },
        }
    }
}

impl InterleavedQuantMatrix {
    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`,
    /// the activations quantized to 8-bit blocks on the way (see the module docs): with
    /// AVX-512 VNNI ([`Isa::Avx512Vnni`] and above) on `vpdpbusd`, 16 outputs at a time;
    /// with AVX2 on `vpmaddubsw`, 8 at a time; else in plain Rust (correct, not fast).
    pub fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        #[cfg(target_arch = "x86_64")]
        if isa.usable() >= Isa::Avx2 {
            let x = BlockRows::new(isa, x, rows, k, self.format());
            let vnni = isa.usable() >= Isa::Avx512Vnni;
            return in_column_tasks(rows, n, |first, count, out| {
                // SAFETY: the task owns output columns first..first + count (a multiple of
                // 16 from a multiple of 16) of the `[rows, n]` buffer; `usable` returned an
                // ISA with AVX-512 VNNI (vnni) or AVX2; `x` was made for this format.
                unsafe {
                    if vnni {
                        avx512vnni::columns(self, &x, first, count, out.0)
                    } else {
                        avx2_interleaved::columns(self, &x, first, count, out.0)
                    }
                }
            });
        }
        let x = QuantizedRows::new(x, rows, k);
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
    use llmjp_weights::quant::{BlockFormat, BLOCK};

    /// `x @ w.T` in f64 over the dequantized weights and activations.
    fn reference(w: &QuantMatrix, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (w.rows(), w.cols());
        let weights = w.dequantize();
        let xq = QuantizedRows::new(x, rows, k);
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut acc = 0f64;
                for i in 0..k {
                    let xv =
                        xq.block(r, i / BLOCK)[i % BLOCK] as f64 * xq.scale(r, i / BLOCK) as f64;
                    acc += xv * weights[c * k + i] as f64;
                }
                out[r * n + c] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_matmul_on_every_shape_format_and_isa() {
        let mut next = crate::testing::uniform(3);
        let shapes = [
            (1, 16, 32),
            (1, 100, 64),
            (3, 33, 96),
            (5, 70, 128),
            (17, 5, 32),
            (1, 300, 512),
            (40, 64, 96),
            (33, 288, 2048),
            (2, 9, 32),
            (5, 7, 160),
            (3, 5, 224),
            (6, 48, 64),
            (9, 17, 32),
            (1, 1000, 64),
        ];
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
            for (rows, n, k) in shapes {
                let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
                let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
                let matrix = QuantMatrix::quantize(format, &w, n, k).unwrap();
                let expected = reference(&matrix, &x, rows);
                // The repacked matrix gives the portable kernel's numbers bit for bit, one
                // row at a time as all at once, on every instruction set.
                let portable = matrix.matmul(Isa::Portable, &x, rows);
                let interleaved = InterleavedQuantMatrix::new(&matrix);
                for isa in supported("interleaved quantized matmul") {
                    let ours = interleaved.matmul(isa, &x, rows);
                    assert_eq!(ours, portable, "interleaved {format} {isa} {rows}x{n}x{k}");
                    for r in 0..rows {
                        let single = interleaved.matmul(isa, &x[r * k..(r + 1) * k], 1);
                        assert_eq!(single, ours[r * n..(r + 1) * n], "{format} {isa} row {r}");
                    }
                }
                for isa in supported("quantized matmul") {
                    let ours = matrix.matmul(isa, &x, rows);
                    let tolerance = 1e-5 * (k as f32).sqrt();
                    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                        assert!(
                            (a - b).abs() <= tolerance,
                            "{format} {isa} {rows}x{n}x{k} [{i}]: {a} vs {b}"
                        );
                    }
                    // One row at a time (decode) gives the numbers of all rows at once.
                    for r in 0..rows {
                        let single = matrix.matmul(isa, &x[r * k..(r + 1) * k], 1);
                        assert_eq!(single, ours[r * n..(r + 1) * n], "{format} {isa} row {r}");
                    }
                }
            }
        }
    }
}
