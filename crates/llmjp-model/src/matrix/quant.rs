//! [`QuantMatrix`]: a block-quantized `[rows, cols]` matrix on the host (llama.cpp's Q8_0 or
//! Q4_0 blocks of 32, their f16 scales kept apart). The CPU kernels multiply by it
//! ([`QuantMatrix::matmul`]); the GPU backends upload its blocks as they are.

use llmjp_weights::quant::{quantize_split, BlockFormat, BLOCK};
use llmjp_weights::{f16, TensorView};
use rayon::prelude::*;

use crate::{ModelError, Result};

/// A block-quantized `[rows, cols]` matrix on the host, row-major (`cols` a multiple of
/// 32): a linear layer's `[out, in]` weight or an embedding table. Its values and scales
/// are used in place in a memory-mapped checkpoint, or owned.
///
/// ```
/// use llmjp_model::cpu::Isa;
/// use llmjp_model::matrix::QuantMatrix;
/// use llmjp_weights::quant::BlockFormat;
///
/// // 2 outputs, 32 inputs: w[0] = 1, w[1] = i / 32.
/// let w: Vec<f32> = (0..32).map(|_| 1.0).chain((0..32).map(|i| i as f32 / 32.0)).collect();
/// let w = QuantMatrix::quantize(BlockFormat::Q8_0, &w, 2, 32)?;
/// let x = vec![0.5f32; 32];
/// let y = w.matmul(Isa::selected()?, &x, 1);
/// assert!((y[0] - 16.0).abs() < 0.05 && (y[1] - 7.75).abs() < 0.05, "{y:?}");
/// # Ok::<(), llmjp_model::ModelError>(())
/// ```
#[derive(Debug)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    format: BlockFormat,
    /// Every row's blocks of values, `format.data_bytes()` each.
    data: HostBytes,
    /// Every row's block scales, little-endian f16.
    scales: HostBytes,
}

/// Bytes in a memory-mapped file, or owned.
#[derive(Debug)]
enum HostBytes {
    Mapped(TensorView),
    Owned(Vec<u8>),
}

impl HostBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(view) => view.bytes(),
            Self::Owned(bytes) => bytes,
        }
    }
}

impl QuantMatrix {
    /// Quantizes a row-major `[rows, cols]` matrix (`cols` a multiple of 32) to `format`.
    pub fn quantize(format: BlockFormat, values: &[f32], rows: usize, cols: usize) -> Result<Self> {
        assert_eq!(values.len(), rows * cols, "{rows}x{cols} values");
        let read =
            |r: usize, out: &mut [f32]| out.copy_from_slice(&values[r * cols..(r + 1) * cols]);
        Self::quantize_with(format, rows, cols, read, |_| {})
    }

    /// Quantizes a `[rows, cols]` matrix (`cols` a multiple of 32) whose row `r` `read(r,
    /// out)` writes: rows in parallel, in chunks of about 16 M values, `done(rows)` called
    /// after each chunk (to release its source).
    pub fn quantize_with(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        read: impl Fn(usize, &mut [f32]) + Sync,
        mut done: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) || cols == 0 {
            return Err(llmjp_weights::WeightsError::NotWholeBlocks {
                len: cols,
                block: BLOCK,
            }
            .into());
        }
        const CHUNK_VALUES: usize = 1 << 24;
        let blocks = cols / BLOCK;
        let (row_data, row_scales) = (blocks * format.data_bytes(), blocks * 2);
        let chunk_rows = (CHUNK_VALUES / cols).max(1);
        let mut data = vec![0u8; rows * row_data];
        let mut scales = vec![0u8; rows * row_scales];
        let chunks = data
            .chunks_mut(chunk_rows * row_data)
            .zip(scales.chunks_mut(chunk_rows * row_scales));
        for (i, (data, scales)) in chunks.enumerate() {
            let first = i * chunk_rows;
            data.par_chunks_mut(row_data)
                .zip(scales.par_chunks_mut(row_scales))
                .enumerate()
                .for_each_init(
                    || vec![0f32; cols],
                    |row, (r, (data, scales))| {
                        read(first + r, row);
                        let split = quantize_split(format, row).expect("whole blocks");
                        data.copy_from_slice(&split.data);
                        for (dst, s) in scales.chunks_exact_mut(2).zip(split.scales) {
                            dst.copy_from_slice(&s.to_le_bytes());
                        }
                    },
                );
            done(first..first + data.len() / row_data);
        }
        Ok(Self {
            rows,
            cols,
            format,
            data: HostBytes::Owned(data),
            scales: HostBytes::Owned(scales),
        })
    }

    /// Uses values and scales in place in their memory-mapped file: `data` holds
    /// `rows * cols / 32` blocks of `format.data_bytes()`, `scales` as many f16 (an error
    /// otherwise).
    pub fn mapped(
        format: BlockFormat,
        data: TensorView,
        scales: TensorView,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let blocks = rows * (cols / BLOCK);
        let sized = cols.is_multiple_of(BLOCK)
            && data.bytes().len() == blocks * format.data_bytes()
            && scales.bytes().len() == blocks * 2;
        if !sized {
            return Err(ModelError::InvalidQuantized(format!(
                "a {rows}x{cols} {format} matrix needs {} bytes of values and {} of scales, \
                 found {} and {}",
                blocks * format.data_bytes(),
                blocks * 2,
                data.bytes().len(),
                scales.bytes().len()
            )));
        }
        Ok(Self {
            rows,
            cols,
            format,
            data: HostBytes::Mapped(data),
            scales: HostBytes::Mapped(scales),
        })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Whether values and scales are used in place in a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, HostBytes::Mapped(_))
    }

    /// Bytes of values and scales.
    pub fn size_bytes(&self) -> usize {
        self.data.bytes().len() + self.scales.bytes().len()
    }

    /// Reads a mapped matrix into memory now (see [`Bf16Matrix::populate`](super::Bf16Matrix::populate)).
    pub fn populate(&self) {
        for part in [&self.data, &self.scales] {
            if let HostBytes::Mapped(view) = part {
                view.populate();
            }
        }
    }

    /// The values of every row's blocks, `format.data_bytes()` per block.
    pub(crate) fn data(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Every row's block scales, little-endian f16.
    pub(crate) fn scale_bytes(&self) -> &[u8] {
        self.scales.bytes()
    }

    /// The values and the scales (see [`data`](Self::data), [`scale_bytes`](Self::scale_bytes)),
    /// moved out when owned, copied from the file when mapped.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<u8>) {
        let owned = |bytes: HostBytes| match bytes {
            HostBytes::Owned(bytes) => bytes,
            HostBytes::Mapped(view) => view.bytes().to_vec(),
        };
        (owned(self.data), owned(self.scales))
    }

    /// Blocks per row.
    pub(crate) fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// The scale of block `b` of row `r`.
    pub(crate) fn scale(&self, r: usize, b: usize) -> f32 {
        let i = 2 * (r * self.blocks() + b);
        let bytes = self.scales.bytes();
        f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32()
    }

    /// The integer values of block `b` of row `r`.
    pub(crate) fn block_values(&self, r: usize, b: usize) -> [i8; BLOCK] {
        let size = self.format.data_bytes();
        let start = (r * self.blocks() + b) * size;
        let bytes = &self.data.bytes()[start..start + size];
        match self.format {
            BlockFormat::Q8_0 => std::array::from_fn(|i| bytes[i] as i8),
            BlockFormat::Q4_0 => std::array::from_fn(|i| {
                let byte = bytes[i % (BLOCK / 2)];
                let nibble = if i < BLOCK / 2 {
                    byte & 0x0f
                } else {
                    byte >> 4
                };
                nibble as i8 - 8
            }),
        }
    }

    /// Row `r`'s integer values (`cols`) and block scales (`cols / 32`).
    pub(crate) fn row_values(&self, r: usize, values: &mut [i8], scales: &mut [f32]) {
        for (b, (dst, scale)) in values.chunks_exact_mut(BLOCK).zip(scales).enumerate() {
            dst.copy_from_slice(&self.block_values(r, b));
            *scale = self.scale(r, b);
        }
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d = self.scale(r, b);
            for (o, q) in dst.iter_mut().zip(self.block_values(r, b)) {
                *o = q as f32 * d;
            }
        }
    }

    /// The whole matrix dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_f32(r, row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_dequantize_as_the_codec_does() {
        let mut next = crate::testing::uniform(5);
        let w: Vec<f32> = (0..3 * 64).map(|_| next()).collect();
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
            let matrix = QuantMatrix::quantize(format, &w, 3, 64).unwrap();
            let blocks = llmjp_weights::quant::quantize(format, &w).unwrap();
            let expected = llmjp_weights::quant::dequantize(format, &blocks).unwrap();
            assert_eq!(matrix.dequantize(), expected, "{format}");
            assert_eq!(matrix.size_bytes(), 3 * 2 * format.block_bytes());
            assert!(!matrix.is_mapped());
        }
        let err = QuantMatrix::quantize(BlockFormat::Q8_0, &[0.0; 48], 3, 16).unwrap_err();
        assert!(err.to_string().contains("32"), "{err}");
    }
}
