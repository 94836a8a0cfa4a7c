//! [`InterleavedKQuantMatrix`]: llama.cpp's K-quant super-blocks (Q4_K, Q5_K, Q6_K)
//! repacked for the 8-bit dot-product kernels (AVX-512 VNNI), 16 weight rows interleaved
//! four values at a time as [`InterleavedQuantMatrix`](super::InterleavedQuantMatrix) does.

use llmjp_weights::f16;
use llmjp_weights::kquant::{q6k_value, scale_min, KQuant, SUPER_BLOCK};
use rayon::prelude::*;

use super::interleaved::GROUP;

/// Steps of four values in a super-block.
const STEPS: usize = SUPER_BLOCK / 4;

/// A `[rows, cols]` K-quant matrix (`cols` a multiple of 256) in groups of 16 rows.
/// For each group and super-block:
///
/// - `values`: 32 vectors of 64 bytes. Vector `u` holds, for row `c` at bytes `4c..4c + 4`,
///   the low four bits of the row's values `4u..4u + 4` in its low nibbles and of values
///   `128 + 4u..128 + 4u + 4` in its high nibbles (steps `u` and `u + 32`).
/// - `high` (Q5_K): 64 masks of 64 bits, bit `4c + t` of mask `s` the fifth bit of value
///   `4s + t` of row `c`. (Q6_K): 16 vectors of 64 bytes, byte `4c + t` of vector `w`
///   holding bits 4–5 of values `4(w + 16k) + t` at bits `2k..2k + 2`, `k` in 0..4.
/// - `scales` (Q4_K, Q5_K): the 8 sub-blocks' 6-bit scales, `[8][16]` bytes, then their
///   minimums in pairs `[4][16][2]` (sub-blocks `2p, 2p + 1`); (Q6_K): the 16 signed scales,
///   `[16][16]`.
/// - `d`, `dmin`: the rows' super-block scales in f32 (`dmin` empty for Q6_K).
///
/// Values are stored unsigned (Q6_K's `q`, not `q − 32`). A last group of fewer than 16
/// rows is padded with zero rows. About the size of the super-blocks it was made from
/// (Q4_K +11 %, Q5_K +9 %, Q6_K +8 %: wider scales and f32 `d`).
#[derive(Debug)]
pub struct InterleavedKQuantMatrix {
    rows: usize,
    cols: usize,
    format: KQuant,
    pub(crate) values: Vec<u8>,
    pub(crate) high: Vec<u8>,
    pub(crate) scales: Vec<u8>,
    pub(crate) d: Vec<f32>,
    pub(crate) dmin: Vec<f32>,
}

/// Bytes per group and super-block of each part: values, high bits, scales.
fn part_bytes(format: KQuant) -> (usize, usize, usize) {
    match format {
        KQuant::Q4K => (2048, 0, 256),
        KQuant::Q5K => (2048, 512, 256),
        KQuant::Q6K => (2048, 1024, 256),
    }
}

impl InterleavedKQuantMatrix {
    /// The matrix of `rows` rows of `format`'s super-blocks in `bytes` (GGML's layout, row
    /// after row), repacked (groups in parallel).
    pub fn new(format: KQuant, bytes: &[u8], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(SUPER_BLOCK),
            "{cols} columns: whole super-blocks"
        );
        let blocks = cols / SUPER_BLOCK;
        let row_bytes = blocks * format.block_bytes();
        assert_eq!(
            bytes.len(),
            rows * row_bytes,
            "{rows} rows of {row_bytes} bytes"
        );
        let groups = rows.div_ceil(GROUP);
        let (vb, hb, sb) = part_bytes(format);
        let gb = groups * blocks;
        let mut out = Self {
            rows,
            cols,
            format,
            values: vec![0; gb * vb],
            high: vec![0; gb * hb],
            scales: vec![0; gb * sb],
            d: vec![0.0; gb * GROUP],
            dmin: vec![0.0; if format == KQuant::Q6K { 0 } else { gb * GROUP }],
        };
        let per = |n: usize| (blocks * n).max(1);
        let dmin_chunk = if format == KQuant::Q6K {
            1
        } else {
            blocks * GROUP
        };
        let mut empty = Vec::new();
        let dmin: &mut Vec<f32> = if format == KQuant::Q6K {
            empty.resize(groups, 0.0);
            &mut empty
        } else {
            &mut out.dmin
        };
        let mut high_empty = Vec::new();
        let high: &mut Vec<u8> = if hb == 0 {
            high_empty.resize(groups, 0);
            &mut high_empty
        } else {
            &mut out.high
        };
        out.values
            .par_chunks_mut(per(vb))
            .zip(high.par_chunks_mut(if hb == 0 { 1 } else { per(hb) }))
            .zip(out.scales.par_chunks_mut(per(sb)))
            .zip(out.d.par_chunks_mut(per(GROUP)))
            .zip(dmin.par_chunks_mut(dmin_chunk))
            .enumerate()
            .for_each(|(g, ((((values, high), scales), d), dmin))| {
                for c in 0..GROUP.min(rows - g * GROUP) {
                    let row = &bytes[(g * GROUP + c) * row_bytes..][..row_bytes];
                    for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                        let q = unpack(format, block);
                        let values = &mut values[b * vb..(b + 1) * vb];
                        for u in 0..32 {
                            for t in 0..4 {
                                values[64 * u + 4 * c + t] =
                                    (q[4 * u + t] & 0x0f) | ((q[128 + 4 * u + t] & 0x0f) << 4);
                            }
                        }
                        let scales = &mut scales[b * sb..(b + 1) * sb];
                        let half =
                            |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
                        match format {
                            KQuant::Q4K | KQuant::Q5K => {
                                let packed: &[u8; 12] = block[4..16].try_into().expect("12 bytes");
                                for j in 0..8 {
                                    let (scale, min) = scale_min(packed, j);
                                    scales[16 * j + c] = scale;
                                    scales[128 + 32 * (j / 2) + 2 * c + j % 2] = min;
                                }
                                d[b * GROUP + c] = half(0);
                                dmin[b * GROUP + c] = half(2);
                                if format == KQuant::Q5K {
                                    let high = &mut high[b * hb..(b + 1) * hb];
                                    for s in 0..STEPS {
                                        for t in 0..4 {
                                            let bit = (q[4 * s + t] >> 4) & 1;
                                            let at = 8 * s + (4 * c + t) / 8;
                                            high[at] |= bit << ((4 * c + t) % 8);
                                        }
                                    }
                                }
                            }
                            KQuant::Q6K => {
                                for s in 0..16 {
                                    scales[16 * s + c] = block[192 + s];
                                }
                                d[b * GROUP + c] = half(208);
                                let high = &mut high[b * hb..(b + 1) * hb];
                                for w in 0..16 {
                                    for t in 0..4 {
                                        let mut byte = 0u8;
                                        for k in 0..4 {
                                            byte |= ((q[4 * (w + 16 * k) + t] >> 4) & 3) << (2 * k);
                                        }
                                        high[64 * w + 4 * c + t] = byte;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        out
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The K-quant format.
    pub fn format(&self) -> KQuant {
        self.format
    }

    /// Super-blocks per row.
    pub(crate) fn blocks(&self) -> usize {
        self.cols / SUPER_BLOCK
    }

    /// Bytes of values, high bits and scales per group and super-block.
    pub(crate) fn part_bytes(&self) -> (usize, usize, usize) {
        part_bytes(self.format)
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.values.len()
            + self.high.len()
            + self.scales.len()
            + 4 * (self.d.len() + self.dmin.len())
    }

    /// Row `r` dequantized into `out` (`cols` values), as
    /// [`kquant::dequantize`](llmjp_weights::kquant::dequantize) computes it.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        for (b, dst) in out.chunks_exact_mut(SUPER_BLOCK).enumerate() {
            let q = self.block_values(r, b);
            let (d, dmin) = self.super_scales(r, b);
            for (i, (o, &q)) in dst.iter_mut().zip(&q).enumerate() {
                *o = match self.format {
                    KQuant::Q6K => d * self.sub_scale(r, b, i / 16) as f32 * (q as i32 - 32) as f32,
                    _ => {
                        let j = i / 32;
                        d * self.sub_scale(r, b, j) as f32 * q as f32
                            - dmin * self.sub_min(r, b, j) as f32
                    }
                };
            }
        }
    }

    /// The unsigned values (`q`, 0..16, 0..32 or 0..64) of super-block `b` of row `r`.
    pub(crate) fn block_values(&self, r: usize, b: usize) -> [u8; SUPER_BLOCK] {
        let (g, c) = (r / GROUP, r % GROUP);
        let at = g * self.blocks() + b;
        let (vb, hb, _) = self.part_bytes();
        let values = &self.values[at * vb..(at + 1) * vb];
        let high = &self.high[at * hb..(at + 1) * hb];
        std::array::from_fn(|i| {
            let (u, t) = ((i % 128) / 4, i % 4);
            let byte = values[64 * u + 4 * c + t];
            let low = if i < 128 { byte & 0x0f } else { byte >> 4 };
            let s = i / 4;
            let top = match self.format {
                KQuant::Q4K => 0,
                KQuant::Q5K => (high[8 * s + (4 * c + t) / 8] >> ((4 * c + t) % 8)) & 1,
                KQuant::Q6K => (high[64 * (s % 16) + 4 * c + t] >> (2 * (s / 16))) & 3,
            };
            low | (top << 4)
        })
    }

    /// Sub-block `j`'s scale of super-block `b` of row `r` (Q4_K/Q5_K: 8 sub-blocks of 32,
    /// unsigned; Q6_K: 16 of 16, signed).
    pub(crate) fn sub_scale(&self, r: usize, b: usize, j: usize) -> i32 {
        let (g, c) = (r / GROUP, r % GROUP);
        let byte = self.scales[(g * self.blocks() + b) * 256 + 16 * j + c];
        match self.format {
            KQuant::Q6K => byte as i8 as i32,
            _ => byte as i32,
        }
    }

    /// Sub-block `j`'s minimum of super-block `b` of row `r` (Q4_K, Q5_K).
    pub(crate) fn sub_min(&self, r: usize, b: usize, j: usize) -> i32 {
        let (g, c) = (r / GROUP, r % GROUP);
        self.scales[(g * self.blocks() + b) * 256 + 128 + 32 * (j / 2) + 2 * c + j % 2] as i32
    }

    /// Super-block `b`'s `d` and `dmin` (0 for Q6_K) of row `r`.
    pub(crate) fn super_scales(&self, r: usize, b: usize) -> (f32, f32) {
        let at = (r / GROUP * self.blocks() + b) * GROUP + r % GROUP;
        (self.d[at], self.dmin.get(at).copied().unwrap_or(0.0))
    }
}

/// A super-block's unsigned values `q` in order (Q6_K: `q` before the −32).
fn unpack(format: KQuant, block: &[u8]) -> [u8; SUPER_BLOCK] {
    match format {
        KQuant::Q4K | KQuant::Q5K => {
            let (high, low) = if format == KQuant::Q5K {
                (Some(&block[16..48]), &block[48..176])
            } else {
                (None, &block[16..144])
            };
            std::array::from_fn(|i| {
                let (j, l) = (i / 32, i % 32);
                let byte = low[32 * (j / 2) + l];
                let mut q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                if let Some(high) = high {
                    q |= ((high[l] >> j) & 1) << 4;
                }
                q
            })
        }
        KQuant::Q6K => {
            std::array::from_fn(|i| (q6k_value(&block[..128], &block[128..192], i) + 32) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmjp_weights::kquant::dequantize;

    /// Random super-blocks with finite scales.
    pub(crate) fn random_blocks(format: KQuant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let kind = format.ggml_type();
        llmjp_testdata::gguf::kquant_blocks(kind, (rows * cols) as u64, seed)
    }

    #[test]
    fn repacking_keeps_every_value_and_scale() {
        for format in KQuant::ALL {
            for (rows, cols) in [(1, 256), (16, 512), (19, 256), (33, 768)] {
                let bytes = random_blocks(format, rows, cols, 3);
                let m = InterleavedKQuantMatrix::new(format, &bytes, rows, cols);
                let expected = dequantize(format, &bytes).unwrap();
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    m.row_f32(r, &mut row);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&row),
                        bits(&expected[r * cols..(r + 1) * cols]),
                        "{format} row {r}"
                    );
                    for b in 0..cols / SUPER_BLOCK {
                        let q = m.block_values(r, b);
                        let (d, dmin) = m.super_scales(r, b);
                        for (i, &q) in q.iter().enumerate() {
                            let value = match format {
                                KQuant::Q6K => {
                                    d * m.sub_scale(r, b, i / 16) as f32 * (q as i32 - 32) as f32
                                }
                                _ => {
                                    d * m.sub_scale(r, b, i / 32) as f32 * q as f32
                                        - dmin * m.sub_min(r, b, i / 32) as f32
                                }
                            };
                            let want = expected[r * cols + b * SUPER_BLOCK + i];
                            assert_eq!(
                                value.to_bits(),
                                want.to_bits(),
                                "{format} {rows}x{cols} r{r} b{b} i{i}"
                            );
                        }
                    }
                }
            }
        }
    }
}
