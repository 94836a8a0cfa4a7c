//! [`Bf16Matrix`]: a bf16 `[rows, cols]` matrix on the host and `x @ w.T` on it.

use super::{amx, avx2, avx512, in_column_tasks, portable, Isa, SendPtr};
use half::bf16;
use llmjp_weights::TensorView;

/// A `[rows, cols]` bf16 matrix on the host, row-major: a linear layer's `[out, in]` weight
/// or an embedding table. Used in place in a memory-mapped checkpoint, or owned.
#[derive(Debug)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

#[derive(Debug)]
enum Storage {
    /// In the memory-mapped checkpoint (little-endian, not necessarily 2-byte aligned).
    Mapped(TensorView),
    /// Converted from an f16 or f32 checkpoint, as little-endian bit patterns.
    Owned(Vec<u16>),
}

impl Bf16Matrix {
    /// Uses a bf16 tensor in place in its memory-mapped file.
    pub fn mapped(weight: TensorView, rows: usize, cols: usize) -> Self {
        assert_eq!(weight.bytes().len(), rows * cols * 2, "{rows}x{cols} bf16");
        Self {
            rows,
            cols,
            storage: Storage::Mapped(weight),
        }
    }

    /// Owns a row-major `[rows, cols]` matrix.
    pub fn from_vec(values: Vec<bf16>, rows: usize, cols: usize) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows}x{cols} bf16");
        let bits = values.into_iter().map(|v| v.to_bits().to_le()).collect();
        Self {
            rows,
            cols,
            storage: Storage::Owned(bits),
        }
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether the matrix is used in place in a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped(_))
    }

    /// Reads a mapped matrix into memory now (one read of its part of the file), so that
    /// the first forward pass does not wait on page faults.
    pub fn populate(&self) {
        if let Storage::Mapped(mapped) = &self.storage {
            mapped.populate();
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(mapped) => mapped.bytes(),
            // SAFETY: any u16 is two initialised bytes; the length is the same memory.
            Storage::Owned(bits) => unsafe {
                std::slice::from_raw_parts(bits.as_ptr().cast::<u8>(), bits.len() * 2)
            },
        }
    }

    fn value(bytes: &[u8], i: usize) -> f32 {
        f32::from_bits((u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32) << 16)
    }

    /// Row `r` widened to f32 into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let row = &self.bytes()[r * self.cols * 2..(r + 1) * self.cols * 2];
        for (i, dst) in out.iter_mut().enumerate() {
            *dst = Self::value(row, i);
        }
    }

    /// `sum(x[i] * w[c][i])` over `i >= from`, in order, with fused multiply-adds.
    pub(super) fn dot(&self, x: &[f32], c: usize, from: usize) -> f32 {
        let k = self.cols;
        let row = &self.bytes()[c * k * 2..(c + 1) * k * 2];
        (from..k).fold(0f32, |acc, i| x[i].mul_add(Self::value(row, i), acc))
    }

    /// `x` is `[rows, cols]` row-major f32; returns `x @ self.T`, `[rows, self.rows()]`.
    ///
    /// With [`Isa::Amx`], 32 rows or more (prefills) run on the tile unit with activations
    /// rounded to bf16, as transformers' bf16 models compute; fewer rows, and the other
    /// instruction sets, keep f32 activations and give the same numbers one row at a time
    /// as many rows at once.
    pub fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(x.len(), rows * k, "{rows} rows of {k}");
        let isa = isa.usable();
        if isa == Isa::Amx && rows >= amx::MIN_ROWS && amx::fits(k, n) {
            return amx::matmul(self, x, rows);
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
            Isa::Avx512 | Isa::Amx => unsafe {
                avx512::columns(self, x, rows, first, count, out.0)
            },
            // SAFETY: forwarded.
            Isa::Avx2 => unsafe { avx2::columns(self, x, rows, first, count, out.0) },
            // SAFETY: forwarded.
            Isa::Portable => unsafe { portable::columns(self, x, rows, first, count, out.0) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::supported;

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
        ];
        for (rows, n, k) in shapes {
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(next())).collect();
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let matrix = Bf16Matrix::from_vec(w.clone(), n, k);
            let expected = reference(&w, &x, rows, n, k);
            for isa in supported("bf16 matmul") {
                let ours = matrix.matmul(isa, &x, rows);
                // From 32 rows on, AMX rounds activations to bf16 (8 significant bits).
                let amx = isa == Isa::Amx && rows >= amx::MIN_ROWS;
                let tolerance = if amx { 1e-2 } else { 1e-5 } * (k as f32).sqrt();
                for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{isa} {rows}x{n}x{k} [{i}]: {a} vs {b}"
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

    #[test]
    fn rows_widen_to_f32() {
        let w: Vec<bf16> = (0..6).map(|i| bf16::from_f32(i as f32 - 2.5)).collect();
        let matrix = Bf16Matrix::from_vec(w, 2, 3);
        let mut row = [0f32; 3];
        matrix.row_f32(1, &mut row);
        assert_eq!(row, [0.5, 1.5, 2.5]);
        assert!(!matrix.is_mapped());
    }
}
