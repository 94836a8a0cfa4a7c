//! llama.cpp's K-quants, byte for byte as GGML stores them (and GGUF files hold them):
//! super-blocks of 256 values in sub-blocks with quantized scales of their own.
//!
//! - **Q4_K** (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and eight
//!   6-bit minimums (one per sub-block of 32), 128 bytes of 4-bit values; a value is
//!   `d·scale × q − dmin·min`. Byte `l` of chunk `c` (32 bytes) holds value `l` of sub-block
//!   `2c` in its low nibble and of sub-block `2c + 1` in its high one.
//! - **Q5_K** (176 bytes): Q4_K's header, then 32 bytes of high bits (bit `j` of byte `l` is
//!   the fifth bit of value `l` of sub-block `j`), then the low nibbles as in Q4_K.
//! - **Q6_K** (210 bytes): 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed
//!   8-bit scales (one per 16 values), f16 `d`; a value is `d·scale × (q − 32)`.
//!
//! [`dequantize`] computes what gguf-py's `gguf.quants` (and GGML's `dequantize_row_q*_K`)
//! computes, bit for bit: each scale product rounded to f32 first, then times the value,
//! then (Q4_K, Q5_K) minus the minimum's product.
//!
//! ```
//! use llmjp_weights::kquant::{dequantize, KQuant};
//!
//! // A Q6_K super-block: every value q = 33 (low nibble 1, high bits 2), scales 1, d = 0.5.
//! let mut block = vec![0x11u8; 128];
//! block.extend([0xaa; 64]);
//! block.extend([1u8; 16]);
//! block.extend(half::f16::from_f32(0.5).to_le_bytes());
//! assert_eq!(dequantize(KQuant::Q6K, &block)?, vec![0.5; 256]);
//! # Ok::<(), llmjp_weights::WeightsError>(())
//! ```

use half::f16;

use crate::{Result, WeightsError};

/// Values per super-block.
pub const SUPER_BLOCK: usize = 256;

/// A K-quant format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KQuant {
    /// 4-bit values, 6-bit scales and minimums per 32: 4.5 bits a value.
    Q4K,
    /// 5-bit values, 6-bit scales and minimums per 32: 5.5 bits a value.
    Q5K,
    /// 6-bit values, 8-bit scales per 16: 6.5625 bits a value.
    Q6K,
}

impl KQuant {
    /// Every K-quant format.
    pub const ALL: [KQuant; 3] = [KQuant::Q4K, KQuant::Q5K, KQuant::Q6K];

    /// Bytes per super-block of [`SUPER_BLOCK`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// GGML's type number (12, 13, 14).
    pub fn ggml_type(self) -> u32 {
        match self {
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    /// The format of GGML type number `id`.
    pub fn from_ggml_type(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_type() == id)
    }

    /// The name used in file formats and options (`q4_k`, `q5_k`, `q6_k`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }

    /// The format called `name` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for KQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The values of `format`'s super-blocks in `bytes` (a whole number of them).
pub fn dequantize(format: KQuant, bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(format.block_bytes()) {
        return Err(WeightsError::NotWholeBlocks {
            len: bytes.len(),
            block: format.block_bytes(),
        });
    }
    let mut out = vec![0f32; bytes.len() / format.block_bytes() * SUPER_BLOCK];
    for (block, dst) in bytes
        .chunks_exact(format.block_bytes())
        .zip(out.chunks_exact_mut(SUPER_BLOCK))
    {
        dequantize_block(format, block, dst);
    }
    Ok(out)
}

/// One super-block (`format.block_bytes()` bytes) into `out` (256 values).
pub fn dequantize_block(format: KQuant, block: &[u8], out: &mut [f32]) {
    assert_eq!(
        block.len(),
        format.block_bytes(),
        "one {format} super-block"
    );
    assert_eq!(out.len(), SUPER_BLOCK, "256 values");
    let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    match format {
        KQuant::Q4K | KQuant::Q5K => {
            let (d, dmin) = (half(0), half(2));
            let scales: &[u8; 12] = block[4..16].try_into().expect("12 bytes");
            let (high, low) = if format == KQuant::Q5K {
                (Some(&block[16..48]), &block[48..176])
            } else {
                (None, &block[16..144])
            };
            for j in 0..8 {
                let (scale, min) = scale_min(scales, j);
                let d1 = d * scale as f32;
                let m1 = dmin * min as f32;
                let chunk = &low[32 * (j / 2)..32 * (j / 2) + 32];
                for l in 0..32 {
                    let mut q = if j % 2 == 0 {
                        chunk[l] & 0x0f
                    } else {
                        chunk[l] >> 4
                    };
                    if let Some(high) = high {
                        q |= ((high[l] >> j) & 1) << 4;
                    }
                    out[32 * j + l] = d1 * q as f32 - m1;
                }
            }
        }
        KQuant::Q6K => {
            let (low, high) = (&block[..128], &block[128..192]);
            let scales = &block[192..208];
            let d = half(208);
            for i in 0..SUPER_BLOCK {
                let q = q6k_value(low, high, i);
                let d1 = d * scales[i / 16] as i8 as f32;
                out[i] = d1 * q as f32;
            }
        }
    }
}

/// Sub-block `j`'s 6-bit scale and minimum in Q4_K's and Q5_K's 12 bytes (GGML's
/// `get_scale_min_k4`).
pub fn scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Value `i` (0..256) of a Q6_K super-block, `q − 32` in −32..=31, from its 128 bytes of
/// low nibbles and 64 bytes of high bit pairs: half `h = i / 128` of the block uses bytes
/// `64h..` of the low nibbles and `32h..` of the high pairs; within it, quarter `k` (of 32
/// values) reads low nibbles of byte `l + 32·(k % 2)` (high nibble for `k ≥ 2`) and bits
/// `2k` of high byte `l`.
pub fn q6k_value(low: &[u8], high: &[u8], i: usize) -> i8 {
    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
    let byte = low[64 * h + l + 32 * (k % 2)];
    let nibble = if k < 2 { byte & 0x0f } else { byte >> 4 };
    let bits = (high[32 * h + l] >> (2 * k)) & 3;
    (nibble | (bits << 4)) as i8 - 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_round_trip() {
        for f in KQuant::ALL {
            assert_eq!(KQuant::from_name(f.name()), Some(f));
            assert_eq!(KQuant::from_ggml_type(f.ggml_type()), Some(f));
        }
        assert_eq!(KQuant::from_ggml_type(8), None);
        let err = dequantize(KQuant::Q4K, &[0; 143]).unwrap_err();
        assert!(matches!(err, WeightsError::NotWholeBlocks { .. }), "{err}");
    }
}
