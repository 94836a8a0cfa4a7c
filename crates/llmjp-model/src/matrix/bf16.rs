//! [`Bf16Matrix`]: a bf16 `[rows, cols]` matrix on the host. The CPU kernels multiply by it
//! ([`Bf16Matrix::matmul`]).

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

    pub(crate) fn bytes(&self) -> &[u8] {
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
    pub(crate) fn dot(&self, x: &[f32], c: usize, from: usize) -> f32 {
        let k = self.cols;
        let row = &self.bytes()[c * k * 2..(c + 1) * k * 2];
        (from..k).fold(0f32, |acc, i| x[i].mul_add(Self::value(row, i), acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
