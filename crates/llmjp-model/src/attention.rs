//! Multi-head (and grouped-query) self-attention with a preallocated KV cache.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use rayon::prelude::*;

use crate::layers::{Linear, Loader, Rope};
use crate::{ComputeDtype, Result};

/// One layer's keys and values, written in place: `[1, kv_heads, capacity, head_dim]`
/// tensors, or f32 on the host for the CPU kernels' path.
#[derive(Debug, Clone)]
pub enum LayerCache<B: Backend> {
    Device {
        keys: Option<Tensor<B, 4>>,
        values: Option<Tensor<B, 4>>,
    },
    Host(HostCache),
}

/// Keys and values on the host, in f32.
#[derive(Debug, Clone)]
pub struct HostCache {
    /// `[kv_heads, blocks, head_dim, 16]`: each block of 16 positions transposed, so that
    /// one query's scores against 16 positions are one vector per dimension.
    keys: Vec<f32>,
    /// `[kv_heads, capacity, head_dim]`.
    values: Vec<f32>,
    capacity: usize,
}

impl HostCache {
    fn blocks(&self) -> usize {
        self.capacity.div_ceil(POSITION_BLOCK)
    }
}

impl<B: Backend> LayerCache<B> {
    /// Zeros of `shape` = `[1, kv_heads, capacity, head_dim]`.
    pub(crate) fn new(shape: [usize; 4], dtype: ComputeDtype, device: &B::Device) -> Self {
        let zeros = || Some(Tensor::zeros(shape, (device, dtype.dtype())));
        Self::Device {
            keys: zeros(),
            values: zeros(),
        }
    }

    /// A host cache of `shape` = `[1, kv_heads, capacity, head_dim]`; its pages are
    /// allocated as positions are written.
    pub(crate) fn new_host(shape: [usize; 4]) -> Self {
        let [_, kv_heads, capacity, dim] = shape;
        let blocks = capacity.div_ceil(POSITION_BLOCK);
        Self::Host(HostCache {
            keys: vec![0.0; kv_heads * blocks * POSITION_BLOCK * dim],
            values: vec![0.0; kv_heads * capacity * dim],
            capacity,
        })
    }

    /// Writes `k`/`v` at positions `start..` and returns the keys and values of all
    /// positions up to their end.
    fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let Self::Device { keys, values } = self else {
            unreachable!("host caches are paired with host weights");
        };
        let end = start + k.dims()[2];
        let write = |slot: &mut Option<Tensor<B, 4>>, new: Tensor<B, 4>| {
            // Taking the tensor out leaves it uniquely owned, so the backend can write in
            // place instead of copying the whole cache.
            let cache = slot.take().expect("the cache is always restored");
            let [_, heads, _, dim] = cache.dims();
            let cache = cache.slice_assign([0..1, 0..heads, start..end, 0..dim], new);
            let visible = cache.clone().slice([0..1, 0..heads, 0..end, 0..dim]);
            *slot = Some(cache);
            visible
        };
        (write(keys, k), write(values, v))
    }
}

#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// Loads `{prefix}.q_proj` … `{prefix}.o_proj`.
    pub(crate) fn load(
        loader: &Loader<'_, B>,
        prefix: &str,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            q_proj: loader.linear(&format!("{prefix}.q_proj.weight"), hidden, heads * head_dim)?,
            k_proj: loader.linear(
                &format!("{prefix}.k_proj.weight"),
                hidden,
                kv_heads * head_dim,
            )?,
            v_proj: loader.linear(
                &format!("{prefix}.v_proj.weight"),
                hidden,
                kv_heads * head_dim,
            )?,
            o_proj: loader.linear(&format!("{prefix}.o_proj.weight"), heads * head_dim, hidden)?,
            heads,
            kv_heads,
            head_dim,
        })
    }

    /// `x` is `[seq, hidden]` at positions `start..start + seq`.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Result<Tensor<B, 2>> {
        let seq = x.dims()[0];
        let split = |t: Tensor<B, 2>, heads: usize| {
            t.reshape([1, seq, heads, self.head_dim]).swap_dims(1, 2)
        };
        let q = rope.apply(split(self.q_proj.forward(x.clone())?, self.heads), start);
        let k = rope.apply(split(self.k_proj.forward(x.clone())?, self.kv_heads), start);
        let v = split(self.v_proj.forward(x)?, self.kv_heads);
        let out = self.attend(q, k, v, cache, start, seq);
        let out = out
            .swap_dims(1, 2)
            .reshape([seq, self.heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// The CPU kernels' path: rows `x` = `[seq, hidden]` at positions `start..`; the
    /// projections, RoPE, the cache and attention on the host, in f32.
    pub(crate) fn forward_host(
        &self,
        x: &[f32],
        seq: usize,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Vec<f32> {
        let LayerCache::Host(cache) = cache else {
            unreachable!("host weights are paired with a host cache");
        };
        let d = self.head_dim;
        let mut q = self.q_proj.host().matmul(x, seq);
        let mut k = self.k_proj.host().matmul(x, seq);
        let v = self.v_proj.host().matmul(x, seq);
        rope.rotate_rows(&mut q, self.heads, start);
        rope.rotate_rows(&mut k, self.kv_heads, start);
        // [seq, kv_heads * d] rows into the cache at positions start...
        let blocks = cache.blocks();
        for t in 0..seq {
            let (block, lane) = ((start + t) / POSITION_BLOCK, (start + t) % POSITION_BLOCK);
            for h in 0..self.kv_heads {
                let from = (t * self.kv_heads + h) * d;
                let keys = &mut cache.keys[(h * blocks + block) * d * POSITION_BLOCK..];
                for (c, &x) in k[from..from + d].iter().enumerate() {
                    keys[c * POSITION_BLOCK + lane] = x;
                }
                let at = (h * cache.capacity + start + t) * d;
                cache.values[at..at + d].copy_from_slice(&v[from..from + d]);
            }
        }
        let out = self.attend_host(&q, cache, start, seq);
        self.o_proj.host().matmul(&out, seq)
    }

    /// Causal attention of `q` (`[seq, heads * d]`, positions `start..`) over the cached
    /// positions `..start + seq`; returns `[seq, heads * d]`. Softmax in f32, as
    /// transformers computes it.
    fn attend_host(&self, q: &[f32], cache: &HostCache, start: usize, seq: usize) -> Vec<f32> {
        let (d, heads) = (self.head_dim, self.heads);
        let group = heads / self.kv_heads;
        let blocks = seq.div_ceil(QUERY_BLOCK);
        let results: Vec<(usize, usize, Vec<f32>)> = (0..heads * blocks)
            .into_par_iter()
            .map(|task| {
                let (h, block) = (task / blocks, task % blocks);
                let first = block * QUERY_BLOCK;
                let count = QUERY_BLOCK.min(seq - first);
                let kv = h / group;
                let queries: Vec<&[f32]> = (first..first + count)
                    .map(|t| &q[(t * heads + h) * d..][..d])
                    .collect();
                let out = attend_block(&HeadBlock {
                    queries: &queries,
                    keys: &cache.keys[kv * cache.blocks() * d * POSITION_BLOCK..],
                    values: &cache.values[kv * cache.capacity * d..],
                    head_dim: d,
                    visible: start + first + 1,
                });
                (h, first, out)
            })
            .collect();
        let mut out = vec![0f32; seq * heads * d];
        for (h, first, values) in results {
            for (i, row) in values.chunks_exact(d).enumerate() {
                out[((first + i) * heads + h) * d..][..d].copy_from_slice(row);
            }
        }
        out
    }

    /// Appends `k`/`v` to the cache and attends over everything cached.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        cache: &mut LayerCache<B>,
        start: usize,
        seq: usize,
    ) -> Tensor<B, 4> {
        let (k, v) = cache.append(k, v, start);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            // The causal mask is aligned bottom-right, so it is right after a cache prefix;
            // a single query sees every cached position anyway.
            is_causal: seq > 1,
        };
        attention(q, k, v, None, None, options)
    }

    /// Grouped-query attention: each key/value head serves `heads / kv_heads` query heads.
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return t;
        }
        let [_, kv_heads, len, dim] = t.dims();
        t.reshape([1, kv_heads, 1, len, dim])
            .expand([1, kv_heads, groups, len, dim])
            .reshape([1, kv_heads * groups, len, dim])
    }
}

/// Queries per attention task: each key and value is read once for a block of queries.
const QUERY_BLOCK: usize = 16;
/// Positions per transposed key block (one AVX-512 vector of f32).
const POSITION_BLOCK: usize = 16;

/// Up to [`QUERY_BLOCK`] consecutive queries of one head against its cached keys
/// (`[blocks, head_dim, 16]`) and values (`[positions, head_dim]`); query `i` sees the
/// first `visible + i` positions.
struct HeadBlock<'a> {
    queries: &'a [&'a [f32]],
    keys: &'a [f32],
    values: &'a [f32],
    head_dim: usize,
    visible: usize,
}

impl HeadBlock<'_> {
    /// Positions query `i` sees.
    fn seen(&self, i: usize) -> usize {
        self.visible + i
    }

    /// Scores are kept for this many positions per query (whole key blocks).
    fn width(&self) -> usize {
        self.seen(self.queries.len() - 1).div_ceil(POSITION_BLOCK) * POSITION_BLOCK
    }
}

/// The block's outputs, `[queries, head_dim]`: AVX-512 where the CPU has it. Every
/// query's arithmetic is the same whatever block it is in (sums run in order of the head
/// dimension, of positions, or of the lanes of one vector), so a prefill gives exactly the
/// numbers of single steps.
fn attend_block(block: &HeadBlock) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if block.head_dim.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F and rows are whole vectors.
        return unsafe { avx512::attend_block(block) };
    }
    attend_block_any(block)
}

/// With AVX-512: one query's scores against 16 positions are one vector (4 key blocks per
/// pass, each block reused by all the queries); the softmax runs on vectors of positions
/// with a vector `exp`; values are weighted 4 positions per pass over the outputs.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{HeadBlock, POSITION_BLOCK as P};
    use crate::cpu_bf16::avx512::exp;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_block(block: &HeadBlock) -> Vec<f32> {
        let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
        let mut scores = vec![0f32; count * width];
        let block_len = d * P;
        for (group, keys) in block.keys[..width * d].chunks(4 * block_len).enumerate() {
            for (i, query) in block.queries.iter().enumerate() {
                let first = group * 4 * P;
                if block.seen(i) <= first {
                    continue;
                }
                let row = &mut scores[i * width + first..][..keys.len() / d];
                match keys.len() / block_len {
                    4 => score::<4>(keys, query, row),
                    3 => score::<3>(keys, query, row),
                    2 => score::<2>(keys, query, row),
                    _ => score::<1>(keys, query, row),
                }
            }
        }
        for (i, row) in scores.chunks_exact_mut(width).enumerate() {
            softmax(row, block.seen(i));
        }
        let mut out = vec![0f32; count * d];
        let values = &block.values[..block.seen(count - 1) * d];
        for (group, v) in values.chunks(4 * d).enumerate() {
            let first = group * 4;
            for (i, (o, p)) in out
                .chunks_exact_mut(d)
                .zip(scores.chunks_exact(width))
                .enumerate()
            {
                if block.seen(i) <= first {
                    continue;
                }
                for c in (0..d).step_by(16) {
                    // SAFETY: `o` and each value row hold d floats, c + 16 <= d.
                    unsafe {
                        let mut acc = _mm512_loadu_ps(o.as_ptr().add(c));
                        for (m, value) in v.chunks_exact(d).enumerate() {
                            let value = _mm512_loadu_ps(value.as_ptr().add(c));
                            acc = _mm512_fmadd_ps(_mm512_set1_ps(p[first + m]), value, acc);
                        }
                        _mm512_storeu_ps(o.as_mut_ptr().add(c), acc);
                    }
                }
            }
        }
        out
    }

    /// One query's scores against the `N` key blocks in `keys` (16 positions each), scaled.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn score<const N: usize>(keys: &[f32], query: &[f32], row: &mut [f32]) {
        let d = query.len();
        assert_eq!(keys.len(), N * d * P);
        let mut acc = [_mm512_setzero_ps(); N];
        for (c, &q) in query.iter().enumerate() {
            let q = _mm512_set1_ps(q);
            for (m, acc) in acc.iter_mut().enumerate() {
                // SAFETY: block m holds d rows of 16, inside the asserted length.
                let k = unsafe { _mm512_loadu_ps(keys.as_ptr().add((m * d + c) * P)) };
                *acc = _mm512_fmadd_ps(q, k, *acc);
            }
        }
        let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
        for (acc, dst) in acc.iter().zip(row.chunks_exact_mut(P)) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_mul_ps(*acc, scale)) };
        }
    }

    /// Softmax of the first `seen` scores of `row`; the rest become exactly zero.
    #[target_feature(enable = "avx512f")]
    fn softmax(row: &mut [f32], seen: usize) {
        let mask = |chunk: usize| -> __mmask16 {
            let left = seen.saturating_sub(chunk * P);
            if left >= P {
                0xFFFF
            } else {
                (1u16 << left) - 1
            }
        };
        let load = |chunk: &[f32]| {
            // SAFETY: 16 floats.
            unsafe { _mm512_loadu_ps(chunk.as_ptr()) }
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for (n, chunk) in row.chunks_exact(P).enumerate() {
            max = _mm512_mask_max_ps(max, mask(n), max, load(chunk));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for (n, chunk) in row.chunks_exact_mut(P).enumerate() {
            let e = _mm512_maskz_mov_ps(mask(n), exp(_mm512_sub_ps(load(chunk), max)));
            sum = _mm512_add_ps(sum, e);
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), e) };
        }
        let sum = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
        for chunk in row.chunks_exact_mut(P) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(chunk.as_mut_ptr(), _mm512_div_ps(load(chunk), sum)) };
        }
    }
}

/// The block in portable code: sums in order of the head dimension and of positions, with
/// separate multiplies and adds.
fn attend_block_any(block: &HeadBlock) -> Vec<f32> {
    let (d, count, width) = (block.head_dim, block.queries.len(), block.width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; count * d];
    let mut scores = vec![0f32; width];
    for (i, (query, o)) in block
        .queries
        .iter()
        .zip(out.chunks_exact_mut(d))
        .enumerate()
    {
        let seen = block.seen(i);
        for (j, s) in scores[..seen].iter_mut().enumerate() {
            let keys = &block.keys[(j / POSITION_BLOCK) * d * POSITION_BLOCK..];
            let lane = j % POSITION_BLOCK;
            let dot = (0..d).fold(0f32, |acc, c| {
                acc + query[c] * keys[c * POSITION_BLOCK + lane]
            });
            *s = dot * scale;
        }
        let max = scores[..seen]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in &mut scores[..seen] {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (p, value) in scores[..seen].iter().zip(block.values.chunks_exact(d)) {
            for (o, v) in o.iter_mut().zip(value) {
                *o += p / sum * v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causal attention in f64 for query `t` (seeing positions `..visible + t`).
    fn reference(q: &[f32], keys: &[f32], values: &[f32], d: usize, seen: usize) -> Vec<f64> {
        let scale = 1.0 / (d as f64).sqrt();
        let scores: Vec<f64> = keys
            .chunks_exact(d)
            .take(seen)
            .map(|k| {
                q.iter()
                    .zip(k)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        let mut out = vec![0f64; d];
        for (p, v) in exp.iter().zip(values.chunks_exact(d)) {
            for (o, &v) in out.iter_mut().zip(v) {
                *o += p / sum * v as f64;
            }
        }
        out
    }

    #[test]
    fn blocks_match_a_reference_and_single_queries_exactly() {
        let mut next = crate::testing::uniform(7);
        let cases = [
            (32, 1, 16),
            (32, 21, 11),
            (8, 5, 16),
            (128, 40, 3),
            (64, 70, 16),
            (16, 200, 1),
        ];
        for (d, visible, count) in cases {
            let positions = visible + count - 1;
            let keys: Vec<f32> = (0..positions * d).map(|_| next()).collect();
            let values: Vec<f32> = (0..positions * d).map(|_| next()).collect();
            let q: Vec<f32> = (0..count * d).map(|_| 4.0 * next()).collect();
            let queries: Vec<&[f32]> = q.chunks_exact(d).collect();
            // The cache's layout: blocks of 16 positions, transposed.
            let blocks = positions.div_ceil(POSITION_BLOCK);
            let mut transposed = vec![0f32; blocks * d * POSITION_BLOCK];
            for (j, key) in keys.chunks_exact(d).enumerate() {
                let (b, lane) = (j / POSITION_BLOCK, j % POSITION_BLOCK);
                for (c, &x) in key.iter().enumerate() {
                    transposed[(b * d + c) * POSITION_BLOCK + lane] = x;
                }
            }
            let block = HeadBlock {
                queries: &queries,
                keys: &transposed,
                values: &values,
                head_dim: d,
                visible,
            };
            for out in [attend_block(&block), attend_block_any(&block)] {
                for (i, row) in out.chunks_exact(d).enumerate() {
                    let expected = reference(queries[i], &keys, &values, d, visible + i);
                    for (a, b) in row.iter().zip(&expected) {
                        assert!((*a as f64 - b).abs() < 1e-5, "d {d} query {i}: {a} vs {b}");
                    }
                }
            }
            // One query at a time (decode steps) gives the block's numbers exactly.
            let together = attend_block(&block);
            for i in 0..count {
                let single = attend_block(&HeadBlock {
                    queries: &queries[i..i + 1],
                    visible: visible + i,
                    ..block
                });
                assert_eq!(single, together[i * d..(i + 1) * d], "d {d} query {i}");
            }
        }
    }
}
