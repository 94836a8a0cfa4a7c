//! [`InterleavedQuantMatrix`]: a [`QuantMatrix`] repacked for the 8-bit dot-product
//! kernels (AVX-512 VNNI): 16 weight rows interleaved four bytes at a time, so that one
//! `vpdpbusd` multiplies four inputs of 16 output features by four broadcast activations.

use llmjp_weights::f16;
use llmjp_weights::quant::{BlockFormat, BLOCK};
use rayon::prelude::*;

use super::QuantMatrix;

/// Output features interleaved in a group.
pub const GROUP: usize = 16;

/// A block-quantized `[rows, cols]` matrix (Q8_0 or Q4_0) repacked in groups of
/// 16 rows (`GROUP`): for each group and block of 32 inputs, 64-byte vectors holding four
/// consecutive inputs of each of the 16 rows (row `c` in bytes `4c..4c + 4`), stored
/// unsigned:
///
/// - Q8_0: 8 vectors, inputs `4j..4j + 4` in vector `j`, each value plus 128;
/// - Q4_0: 4 vectors, inputs `4j..4j + 4` in the low nibbles of vector `j` and inputs
///   `16 + 4j..16 + 4j + 4` in its high nibbles, each value plus 8 (the stored nibbles).
///
/// The group's 16 f16 scales of each block follow in a separate array. A last group of
/// fewer than 16 rows is padded with rows of zeros. The same memory as the blocks it was
/// made from; the multiplication's numbers are the portable kernel's, bit for bit.
///
/// ```
/// use llmjp_model::cpu::Isa;
/// use llmjp_model::matrix::{InterleavedQuantMatrix, QuantMatrix};
/// use llmjp_weights::quant::BlockFormat;
///
/// let w: Vec<f32> = (0..3 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
/// let w = QuantMatrix::quantize(BlockFormat::Q4_0, &w, 3, 64)?;
/// let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
/// let repacked = InterleavedQuantMatrix::new(&w);
/// for isa in Isa::ALL.into_iter().filter(|isa| isa.is_supported()) {
///     assert_eq!(repacked.matmul(isa, &x, 1), w.matmul(Isa::Portable, &x, 1));
/// }
/// # Ok::<(), llmjp_model::ModelError>(())
/// ```
#[derive(Debug)]
pub struct InterleavedQuantMatrix {
    rows: usize,
    cols: usize,
    format: BlockFormat,
    data: Vec<u8>,
    /// f16 bit patterns, `GROUP` per group and block.
    scales: Vec<u16>,
}

impl InterleavedQuantMatrix {
    /// `matrix` repacked (groups in parallel).
    pub fn new(matrix: &QuantMatrix) -> Self {
        let (rows, cols, format) = (matrix.rows(), matrix.cols(), matrix.format());
        let blocks = cols / BLOCK;
        let groups = rows.div_ceil(GROUP);
        let block_bytes = format.data_bytes();
        let group_block = GROUP * block_bytes;
        let (pad, flip) = match format {
            BlockFormat::Q8_0 => (0x80u8, 0x80u8),
            BlockFormat::Q4_0 => (0x88u8, 0u8),
        };
        let mut data = vec![pad; groups * blocks * group_block];
        let mut scales = vec![0u16; groups * blocks * GROUP];
        let (src, src_scales) = (matrix.data(), matrix.scale_bytes());
        data.par_chunks_mut(blocks * group_block)
            .zip(scales.par_chunks_mut(blocks * GROUP))
            .enumerate()
            .for_each(|(g, (data, scales))| {
                for c in 0..GROUP.min(rows - g * GROUP) {
                    let row = g * GROUP + c;
                    for b in 0..blocks {
                        let block = &src[(row * blocks + b) * block_bytes..][..block_bytes];
                        let dst = &mut data[b * group_block..(b + 1) * group_block];
                        // Four bytes j of the block go to vector j, at row c's place.
                        for (j, four) in block.chunks_exact(4).enumerate() {
                            for (t, &byte) in four.iter().enumerate() {
                                dst[j * 4 * GROUP + 4 * c + t] = byte ^ flip;
                            }
                        }
                        let at = 2 * (row * blocks + b);
                        scales[b * GROUP + c] =
                            u16::from_le_bytes([src_scales[at], src_scales[at + 1]]);
                    }
                }
            });
        Self {
            rows,
            cols,
            format,
            data,
            scales,
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

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Bytes of values and scales.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 2 * self.scales.len()
    }

    /// Blocks per row.
    pub(crate) fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Bytes of one group's block.
    pub(crate) fn group_block_bytes(&self) -> usize {
        GROUP * self.format.data_bytes()
    }

    /// The repacked values, group by group, block by block.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// The f16 scales, [`GROUP`] per group and block.
    pub(crate) fn scale_bits(&self) -> &[u16] {
        &self.scales
    }

    /// The scale of block `b` of row `r`.
    pub(crate) fn scale(&self, r: usize, b: usize) -> f32 {
        let (g, c) = (r / GROUP, r % GROUP);
        f16::from_bits(self.scales[(g * self.blocks() + b) * GROUP + c]).to_f32()
    }

    /// The integer values of block `b` of row `r`.
    pub(crate) fn block_values(&self, r: usize, b: usize) -> [i8; BLOCK] {
        let (g, c) = (r / GROUP, r % GROUP);
        let start = (g * self.blocks() + b) * self.group_block_bytes();
        let dst = &self.data[start..start + self.group_block_bytes()];
        let byte = |j: usize, t: usize| dst[j * 4 * GROUP + 4 * c + t];
        match self.format {
            BlockFormat::Q8_0 => std::array::from_fn(|i| (byte(i / 4, i % 4) ^ 0x80) as i8),
            BlockFormat::Q4_0 => std::array::from_fn(|i| {
                let (low, high) = (i % (BLOCK / 2), i >= BLOCK / 2);
                let stored = byte(low / 4, low % 4);
                let nibble = if high { stored >> 4 } else { stored & 0x0f };
                nibble as i8 - 8
            }),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacking_keeps_every_value_and_scale() {
        let mut next = crate::testing::uniform(9);
        for (rows, cols) in [(1, 32), (16, 64), (17, 96), (40, 32), (33, 256)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
            for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
                let matrix = QuantMatrix::quantize(format, &w, rows, cols).unwrap();
                let repacked = InterleavedQuantMatrix::new(&matrix);
                assert_eq!(
                    repacked.size_bytes(),
                    rows.div_ceil(GROUP) * GROUP * cols / BLOCK * format.block_bytes()
                );
                for r in 0..rows {
                    for b in 0..cols / BLOCK {
                        assert_eq!(repacked.block_values(r, b), matrix.block_values(r, b));
                        assert_eq!(repacked.scale(r, b), matrix.scale(r, b));
                    }
                }
            }
        }
    }
}
