//! The `#[cube]` kernels of block-quantized weights (Q8_0, Q4_0), reading the blocks'
//! values as the checkpoint stores them, as 32-bit words (`bits` words per block of 32
//! values), and their f16 scales (one per block):
//!
//! - Q8_0 (`bits` = 8): word `w` of a block holds its values `4w .. 4w + 4`, one signed
//!   byte each, low byte first.
//! - Q4_0 (`bits` = 4): word `w` holds bytes `4w .. 4w + 4`; byte `j`'s low nibble is
//!   value `j`, its high nibble value `j + 16`, each `nibble − 8`.
//!
//! A value is `q × scale`, computed in f32 (exact: 8 × 11 significant bits); products
//! accumulate in f32 against f32 activations.

// The `#[cube]` macro generates launch modules and types without docs.
#![allow(missing_docs)]

use cubecl::prelude::*;
use llmjp_weights::f16;

use super::kernels::cube_sum;

/// Byte `j` (0..4) of `word` as a signed integer, in f32.
#[cube]
fn signed_byte(word: u32, #[comptime] j: u32) -> f32 {
    let byte = (word >> (8 * j)) & 0xffu32;
    // Two's complement: flipping the sign bit maps -128..=127 to 0..=255 in order.
    f32::cast_from(byte ^ 0x80u32) - 128.0f32
}

/// Nibble `n` (0..8) of `word` minus 8, in f32.
#[cube]
fn offset_nibble(word: u32, #[comptime] n: u32) -> f32 {
    f32::cast_from((word >> (4 * n)) & 0xfu32) - 8.0f32
}

/// The dot product of one word's values with the activations they multiply: `x[at ..
/// at + 4]` (Q8_0, and Q4_0's low nibbles) and `x[at + 16 .. at + 20]` (Q4_0's high
/// nibbles).
#[cube]
fn word_dot(word: u32, x: &Array<f32>, at: usize, #[comptime] bits: usize) -> f32 {
    let mut dot = 0.0f32;
    if comptime![bits == 8] {
        #[unroll]
        for j in 0..4u32 {
            dot += signed_byte(word, j) * x[at + j as usize];
        }
    } else {
        #[unroll]
        for j in 0..4u32 {
            dot += offset_nibble(word, 2 * j) * x[at + j as usize];
            dot += offset_nibble(word, 2 * j + 1) * x[at + 16 + j as usize];
        }
    }
    dot
}

/// Value `c` of row `row` (`k` values per row), dequantized.
#[cube]
fn value_at(
    qs: &Array<u32>,
    scales: &Array<f16>,
    row: usize,
    c: usize,
    k: usize,
    #[comptime] bits: usize,
) -> f32 {
    let block = row * (k / 32) + c / 32;
    let j = c % 32;
    let scale = f32::cast_from(scales[block]);
    let q = if comptime![bits == 8] {
        let byte = (qs[block * 8 + j / 4] >> (8 * (j % 4)) as u32) & 0xffu32;
        f32::cast_from(byte ^ 0x80u32) - 128.0f32
    } else {
        let low = j % 16;
        let shift = 8 * (low % 4) + 4 * (j / 16);
        f32::cast_from((qs[block * 4 + low / 4] >> shift as u32) & 0xfu32) - 8.0f32
    };
    q * scale
}

/// `y = x @ w.T` for a few activation rows, `w` block-quantized: one cube per (output
/// feature, row), its units striding over the row's words in vectors of `N`, each word's
/// values multiplied by their activations, scaled once per word, then summed in shared
/// memory. Only the quantized bytes and scales are read: nothing is dequantized to memory.
///
/// `x`: `[rows, k]` f32; `qs`: `[out, k × bits / 32]` words; `scales`: `[out, k / 32]`;
/// `y`: `[rows, out]` f32. `k × bits / 32` is a multiple of `N`. The cube count is `(gx,
/// gy, rows)` with `gx * gy >= out` (grid limits).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_quant<N: Size>(
    x: &Array<f32>,
    qs: &Array<Vector<u32, N>>,
    scales: &Array<f16>,
    y: &mut Array<f32>,
    k: usize,
    out_features: usize,
    #[comptime] units: usize,
    #[comptime] bits: usize,
) {
    let feature = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    if feature >= out_features {
        terminate!();
    }
    let row = CUBE_POS_Z as usize;
    let blocks = k / 32;
    let vectors = blocks * bits / N::value();
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < vectors {
        let words = qs[feature * vectors + i];
        #[unroll]
        for lane in 0..N::value() {
            // Word `w` of block `block` of this row (a block holds `bits` words).
            let word = i * N::value() + lane;
            let (block, w) = (word / bits, word % bits);
            let scale = f32::cast_from(scales[feature * blocks + block]);
            acc += scale * word_dot(words[lane], x, row * k + block * 32 + 4 * w, bits);
        }
        i += CUBE_DIM as usize;
    }
    let mut shared = SharedMemory::<f32>::new(units);
    let total = cube_sum(acc, &mut shared);
    if UNIT_POS == 0 {
        y[row * out_features + feature] = total;
    }
}

/// The whole matrix dequantized, `[out, k]` f32 (for the GEMM of a prefill): one unit per
/// value.
#[cube(launch_unchecked)]
pub fn dequantize(
    qs: &Array<u32>,
    scales: &Array<f16>,
    out: &mut Array<f32>,
    k: usize,
    #[comptime] bits: usize,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = value_at(qs, scales, i / k, i % k, k, bits);
    }
}

/// Rows `ids` of the matrix dequantized, `[ids, k]` f32 (an embedding lookup): one unit
/// per value. Every id is a row of the matrix.
#[cube(launch_unchecked)]
pub fn dequantize_rows(
    qs: &Array<u32>,
    scales: &Array<f16>,
    ids: &Array<u32>,
    out: &mut Array<f32>,
    k: usize,
    #[comptime] bits: usize,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let row = ids[i / k] as usize;
        out[i] = value_at(qs, scales, row, i % k, k, bits);
    }
}
