//! The bf16 matmul: `x @ w.T` for f32 activation rows `x` and a [`Bf16Matrix`] `w`, in
//! tasks of weight rows on every core ([`Bf16Matrix::matmul`]).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
mod portable;

use super::isa::Isa;
use super::tasks::{in_column_tasks, SendPtr};
use crate::matrix::Bf16Matrix;

impl Bf16Matrix {
    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`.
    ///
    /// [`Isa::Avx512Bf16`] rounds the activations to bf16 (as transformers' bf16 models
    /// compute) and multiplies them on `vdpbf16ps`; [`Isa::Amx`] does the same, 32 rows or
    /// more (prefills) on the tile unit. The instruction sets below keep f32 activations.
    /// Except for AMX's prefills, one row at a time gives the same numbers as many rows at
    /// once.
    pub fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows(), self.cols());
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        let isa = isa.usable();
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Amx && rows >= amx::MIN_ROWS && amx::fits(k, n) {
            return amx::matmul(self, x, rows);
        }
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx512Bf16 {
            // SAFETY: `usable` returned an ISA with AVX-512 BF16.
            let x = unsafe { avx512bf16::Bf16Rows::new(x, rows, k) };
            return in_column_tasks(rows, n, |first, count, out| {
                // SAFETY: the task owns output columns first..first + count of the
                // `[rows, n]` buffer; `usable` returned an ISA with AVX-512 BF16.
                unsafe { avx512bf16::columns(self, &x, rows, first, count, out.0) }
            });
        }
        in_column_tasks(rows, n, |first, count, out| {
            // SAFETY: the task owns output columns first..first + count of the `[rows, n]`
            // buffer; `isa` is one the CPU has.
            unsafe { self.columns(isa, x, rows, first, count, out) }
        })
    }

    /// Output columns `first..first + count` for every activation row.
    ///
    /// # Safety
    /// `out` points to a `[rows, self.rows]` buffer nobody else writes in these columns,
    /// and the CPU runs `isa`.
    unsafe fn columns(
        &self,
        isa: Isa,
        x: &[f32],
        rows: usize,
        first: usize,
        count: usize,
        out: SendPtr,
    ) {
        match isa {
            // SAFETY: forwarded.
            #[cfg(target_arch = "x86_64")]
            isa if isa >= Isa::Avx512 => unsafe {
                avx512::columns(self, x, rows, first, count, out.0)
            },
            // SAFETY: forwarded.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::columns(self, x, rows, first, count, out.0) },
            // SAFETY: forwarded.
            _ => unsafe { portable::columns(self, x, rows, first, count, out.0) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::isa::supported;
    use half::bf16;

    fn reference(w: &[bf16], x: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut acc = 0f64;
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[c * k + i].to_f64();
                }
                out[r * n + c] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn matches_a_plain_matmul_on_every_shape_and_isa() {
        let mut next = crate::testing::uniform(1);
        let shapes = [
            (1, 16, 2),
            (1, 100, 37),
            (3, 33, 64),
            (9, 70, 130),
            (17, 5, 8),
            (1, 300, 512),
            (32, 64, 96),
            (40, 64, 96),
            (77, 96, 256),
            (33, 288, 2048),
            (6, 7, 31),
            (5, 9, 33),
            (2, 13, 95),
        ];
        for (rows, n, k) in shapes {
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(next())).collect();
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let matrix = Bf16Matrix::from_vec(w.clone(), n, k);
            let expected = reference(&w, &x, rows, n, k);
            // What the bf16 dot products compute: activations rounded to bf16.
            let rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let expected_rounded = reference(&w, &rounded, rows, n, k);
            for isa in supported("bf16 matmul") {
                let ours = matrix.matmul(isa, &x, rows);
                let amx = isa == Isa::Amx && rows >= amx::MIN_ROWS;
                // bf16 x bf16 products are exact in f32: only the sums' rounding differs
                // (AMX's tiles add in another order).
                let expected = if isa >= Isa::Avx512Bf16 {
                    &expected_rounded
                } else {
                    &expected
                };
                let tolerance = if amx { 1e-4 } else { 1e-5 } * (k as f32).sqrt();
                for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{isa} {rows}x{n}x{k} [{i}]: {a} vs {b}"
                    );
                }
                // The rounding to bf16 itself stays within bf16's 8 significant bits.
                for (a, b) in ours.iter().zip(&reference(&w, &x, rows, n, k)) {
                    assert!(
                        (a - b).abs() <= 1e-2 * (k as f32).sqrt(),
                        "{isa}: {a} vs {b}"
                    );
                }
                // Without AMX: the same numbers one row at a time (decode) as all rows at
                // once (prefill).
                if !amx {
                    for r in 0..rows {
                        let single = matrix.matmul(isa, &x[r * k..(r + 1) * k], 1);
                        assert_eq!(
                            single,
                            ours[r * n..(r + 1) * n],
                            "{isa} {rows}x{n}x{k} row {r}"
                        );
                    }
                }
            }
        }
    }
}
