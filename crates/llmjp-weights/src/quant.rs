//! llama.cpp's block formats, byte for byte as GGML stores them (and GGUF files hold them):
//!
//! - **Q8_0**: blocks of 32 values, each an f16 scale `d` then 32 `i8`; a value is `q × d`,
//!   `d = max|x| / 127`, `q = round(x / d)` (half away from zero). 34 bytes per 32 values.
//! - **Q4_0**: blocks of 32 values, an f16 scale then 16 bytes; byte `j` holds value `j` in
//!   its low nibble and value `j + 16` in its high one; a value is `(q − 8) × d`, where `d`
//!   is the value of largest magnitude divided by −8. 18 bytes per 32 values.
//!
//! ```
//! use llmjp_weights::quant::{dequantize, quantize, BlockFormat};
//!
//! let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
//! let blocks = quantize(BlockFormat::Q8_0, &x)?;
//! assert_eq!(blocks.len(), 34);
//! let back = dequantize(BlockFormat::Q8_0, &blocks)?;
//! assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() <= 16.0 / 127.0 / 2.0 + 1e-3));
//! # Ok::<(), llmjp_weights::WeightsError>(())
//! ```

use half::f16;

use crate::{Result, WeightsError};

/// Values per block of either format.
pub const BLOCK: usize = 32;

/// The suffix of a quantized weight's scales in a quantized checkpoint: `X.weight` holds
/// the values (`I8 [out, in]` for Q8_0, `U8 [out, in / 2]` for Q4_0), `X.weight_scale` the
/// f16 scales, `[out, in / 32]`.
pub const SCALE_SUFFIX: &str = "_scale";

/// The safetensors dtype of `format`'s values in a quantized checkpoint.
pub fn values_dtype(format: BlockFormat) -> crate::Dtype {
    match format {
        BlockFormat::Q8_0 => crate::Dtype::I8,
        BlockFormat::Q4_0 => crate::Dtype::U8,
    }
}

/// A block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// 8-bit values, one f16 scale per 32.
    Q8_0,
    /// 4-bit values, one f16 scale per 32.
    Q4_0,
}

impl BlockFormat {
    /// Bytes per block of [`BLOCK`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 2 + BLOCK,
            Self::Q4_0 => 2 + BLOCK / 2,
        }
    }

    /// Bytes of quantized values (scales apart) per block: 32 for Q8_0, 16 for Q4_0.
    pub fn data_bytes(self) -> usize {
        self.block_bytes() - 2
    }

    /// The name used in file formats and options (`q8_0`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }

    /// The format called `name` (`q8_0`, `q4_0`, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Q8_0, Self::Q4_0]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

/// A block-format name that is neither `q8_0` nor `q4_0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: expected q8_0 or q4_0")]
pub struct UnknownBlockFormat(pub String);

impl std::str::FromStr for BlockFormat {
    type Err = UnknownBlockFormat;

    /// ```
    /// use llmjp_weights::quant::BlockFormat;
    /// assert_eq!("Q4_0".parse::<BlockFormat>(), Ok(BlockFormat::Q4_0));
    /// assert!("q5_k".parse::<BlockFormat>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| UnknownBlockFormat(s.to_owned()))
    }
}

impl std::fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Blocks with their scales apart: the quantized values of every block one after another
/// (`data_bytes` each, as in the block) and the f16 scales.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitBlocks {
    /// The blocks' values, in block order.
    pub data: Vec<u8>,
    /// One scale per block.
    pub scales: Vec<f16>,
}

/// Quantizes `x` (a whole number of blocks) into `format` with the scales apart: the
/// layout of a quantized safetensors checkpoint.
pub fn quantize_split(format: BlockFormat, x: &[f32]) -> Result<SplitBlocks> {
    split(format, &quantize(format, x)?)
}

/// Splits `format`'s blocks (a whole number) into values and scales.
pub fn split(format: BlockFormat, blocks: &[u8]) -> Result<SplitBlocks> {
    whole_blocks(blocks.len(), format.block_bytes())?;
    let count = blocks.len() / format.block_bytes();
    let mut data = Vec::with_capacity(count * format.data_bytes());
    let mut scales = Vec::with_capacity(count);
    for block in blocks.chunks_exact(format.block_bytes()) {
        scales.push(f16::from_le_bytes([block[0], block[1]]));
        data.extend_from_slice(&block[2..]);
    }
    Ok(SplitBlocks { data, scales })
}

/// Quantizes `x` (a whole number of blocks) into `format`'s blocks.
pub fn quantize(format: BlockFormat, x: &[f32]) -> Result<Vec<u8>> {
    whole_blocks(x.len(), BLOCK)?;
    let mut out = Vec::with_capacity(x.len() / BLOCK * format.block_bytes());
    for block in x.chunks_exact(BLOCK) {
        match format {
            BlockFormat::Q8_0 => quantize_q8_0(block, &mut out),
            BlockFormat::Q4_0 => quantize_q4_0(block, &mut out),
        }
    }
    Ok(out)
}

/// The values of `format`'s blocks in `bytes` (a whole number of blocks).
pub fn dequantize(format: BlockFormat, bytes: &[u8]) -> Result<Vec<f32>> {
    whole_blocks(bytes.len(), format.block_bytes())?;
    let mut out = Vec::with_capacity(bytes.len() / format.block_bytes() * BLOCK);
    for block in bytes.chunks_exact(format.block_bytes()) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        match format {
            BlockFormat::Q8_0 => out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d)),
            BlockFormat::Q4_0 => {
                let nibbles = &block[2..];
                out.extend(nibbles.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(nibbles.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
    }
    Ok(out)
}

fn whole_blocks(len: usize, block: usize) -> Result<()> {
    if len.is_multiple_of(block) {
        Ok(())
    } else {
        Err(WeightsError::NotWholeBlocks { len, block })
    }
}

/// GGML's `quantize_row_q8_0_ref` for one block.
fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// GGML's `quantize_row_q4_0_ref` for one block.
fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let (low, high) = x.split_at(BLOCK / 2);
    out.extend(
        low.iter()
            .zip(high)
            .map(|(&a, &b)| nibble(a) | (nibble(b) << 4)),
    );
}
