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

/// A K-quant file type as `llama-quantize` names it: a base format for most matrices and
/// llama.cpp's per-tensor choices for the rest (see `llmjp_model::quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KQuantMix {
    /// Q4_K, with Q6_K for the LM head and for the value and down projections of some
    /// layers (`q4_k_m`).
    Q4KM,
    /// Q5_K, with Q6_K for the LM head and for the value and down projections of some
    /// layers (`q5_k_m`).
    Q5KM,
    /// Q6_K throughout (`q6_k`).
    Q6K,
}

impl KQuantMix {
    /// Every mix.
    pub const ALL: [KQuantMix; 3] = [KQuantMix::Q4KM, KQuantMix::Q5KM, KQuantMix::Q6K];

    /// The format of most matrices.
    pub fn base(self) -> KQuant {
        match self {
            Self::Q4KM => KQuant::Q4K,
            Self::Q5KM => KQuant::Q5K,
            Self::Q6K => KQuant::Q6K,
        }
    }

    /// `q4_k_m`, `q5_k_m`, `q6_k`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4KM => "q4_k_m",
            Self::Q5KM => "q5_k_m",
            Self::Q6K => "q6_k",
        }
    }

    /// The mix called `name` (any case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// llama.cpp's `use_more_bits`: whether layer `layer` of `layers` gets more bits in its
    /// value and down projections (the first and last eighth, and every third between).
    pub fn more_bits(layer: usize, layers: usize) -> bool {
        let (i, n) = (layer as i64, layers as i64);
        i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
    }
}

impl std::fmt::Display for KQuantMix {
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

/// Quantizes `x` (a whole number of super-blocks) into `format`'s super-blocks as GGML's
/// reference quantizers (`quantize_row_q4_K_ref`, `…q5_K_ref`, `…q6_K_ref`, what
/// `llama-quantize` runs without an importance matrix) do, byte for byte: the same search
/// for each sub-block's scale and minimum, in the same f32 operations.
pub fn quantize(format: KQuant, x: &[f32]) -> Result<Vec<u8>> {
    if !x.len().is_multiple_of(SUPER_BLOCK) {
        return Err(WeightsError::NotWholeBlocks {
            len: x.len(),
            block: SUPER_BLOCK,
        });
    }
    let mut out = Vec::with_capacity(x.len() / SUPER_BLOCK * format.block_bytes());
    for block in x.chunks_exact(SUPER_BLOCK) {
        let block: &[f32; SUPER_BLOCK] = block.try_into().expect("256 values");
        match format {
            KQuant::Q4K | KQuant::Q5K => quantize_q45k(format, block, &mut out),
            KQuant::Q6K => quantize_q6k(block, &mut out),
        }
    }
    Ok(out)
}

/// GGML's `nearest_int`: round to nearest, ties to even.
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// GGML's `make_qkx2_quants`: values `l` in `0..=nmax` and a scale and (negated) minimum
/// for `x`, searched over `nstep + 1` scales around `nmax / (max − min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// GGML's `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` for one super-block.
fn quantize_q45k(format: KQuant, x: &[f32; SUPER_BLOCK], out: &mut Vec<u8>) {
    let (nmax, rmin, nstep) = match format {
        KQuant::Q4K => (15, -1.0, 20),
        _ => (31, -0.5, 15),
    };
    let mut l = [0u8; SUPER_BLOCK];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min(&packed, j);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    if format == KQuant::Q5K {
        let mut high = [0u8; 32];
        for (chunk, n) in (0..SUPER_BLOCK).step_by(64).enumerate() {
            for j in 0..32 {
                high[j] |= (l[n + j] >> 4) << (2 * chunk);
                high[j] |= (l[n + j + 32] >> 4) << (2 * chunk + 1);
            }
        }
        out.extend(high);
    }
    for n in (0..SUPER_BLOCK).step_by(64) {
        out.extend((0..32).map(|j| (l[n + j] & 0x0f) | ((l[n + j + 32] & 0x0f) << 4)));
    }
}

/// GGML's `make_qx_quants` with `rmse_type` 1 and no weights: values `l + nmax` in
/// `0..2·nmax` and the scale, searched over 19 scales around `−nmax / max`.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        l_out.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                l_out[i] = (l + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// GGML's `quantize_row_q6_K_ref` for one super-block.
fn quantize_q6k(x: &[f32; SUPER_BLOCK], out: &mut Vec<u8>) {
    let mut l = [0i8; SUPER_BLOCK];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < 1e-15 {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d.to_f32() * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let mut low = [0u8; 128];
    let mut high = [0u8; 64];
    for (h, j) in (0..SUPER_BLOCK).step_by(128).enumerate() {
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            low[64 * h + i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
            low[64 * h + i + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
            high[32 * h + i] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    out.extend(low);
    out.extend(high);
    out.extend(sc.map(|s| s as u8));
    out.extend(d.to_le_bytes());
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
