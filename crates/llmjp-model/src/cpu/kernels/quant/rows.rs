//! Activation rows quantized to 8-bit blocks, as the quantized matmul multiplies them.

use llmjp_weights::quant::BLOCK;

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

impl QuantizedRows {
    pub(crate) fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut values = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(x.len() / BLOCK);
        for block in x.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(d);
            values.extend(block.iter().map(|&v| (v * id).round() as i8));
        }
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
