//! [`HostKv`]: one layer's keys and values on the host in f32, in shareable pages laid out
//! for the CPU attention kernel, and causal attention over them.

use std::any::Any;
use std::sync::Arc;

use rayon::prelude::*;

use super::kernels::attention::{
    attend_block, HeadBlock, HeadPage, PAGE, POSITION_BLOCK, QUERY_BLOCK,
};
use super::kernels::Isa;
use crate::cache::OpsLayerCache;
use crate::kv_memory::{Charge, KvMemory};

/// `PAGE` positions of one layer's keys and values, every key/value head: keys
/// `[kv_heads, PAGE / 16, head_dim, 16]` (each block of 16 positions transposed, so that one
/// query's scores against 16 positions are one vector per dimension), then values
/// `[kv_heads, PAGE, head_dim]`.
#[derive(Debug, Clone)]
struct Page {
    data: Vec<f32>,
    _charge: Charge,
}

impl Page {
    fn new(kv_heads: usize, head_dim: usize, memory: &KvMemory) -> Self {
        let floats = 2 * kv_heads * PAGE * head_dim;
        Self {
            data: vec![0.0; floats],
            _charge: memory.charge(floats * size_of::<f32>()),
        }
    }
}

/// One layer's keys and values for one sequence, on the host in f32, in pages of [`PAGE`]
/// positions. Pages are reference-counted: [`HostKv::fork`] shares them with another
/// sequence, and a page is copied when a sequence writes to one it shares (copy on write).
#[derive(Debug, Clone)]
pub struct HostKv {
    pages: Vec<Arc<Page>>,
    kv_heads: usize,
    head_dim: usize,
    memory: KvMemory,
}

impl HostKv {
    /// Room for `capacity` positions (whole pages), charged to `memory`.
    pub fn new(kv_heads: usize, head_dim: usize, capacity: usize, memory: &KvMemory) -> Self {
        let mut kv = Self {
            pages: Vec::new(),
            kv_heads,
            head_dim,
            memory: memory.clone(),
        };
        kv.grow(capacity);
        kv
    }

    /// Positions it has room for (whole pages).
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }

    /// Makes room for `capacity` positions, keeping what is written (new pages only).
    pub fn grow(&mut self, capacity: usize) {
        while self.capacity() < capacity {
            let page = Page::new(self.kv_heads, self.head_dim, &self.memory);
            self.pages.push(Arc::new(page));
        }
    }

    /// A cache holding this one's first `positions` positions, its pages shared (each is
    /// copied when either side first writes to it).
    pub fn fork(&self, positions: usize) -> Self {
        Self {
            pages: self.pages[..positions.div_ceil(PAGE).min(self.pages.len())].to_vec(),
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            memory: self.memory.clone(),
        }
    }

    /// Pages it holds that another cache holds too.
    pub fn shared_pages(&self) -> usize {
        self.pages
            .iter()
            .filter(|p| Arc::strong_count(p) > 1)
            .count()
    }

    /// Writes `k` and `v` (`[rows, kv_heads * head_dim]`) at positions `start..`.
    pub fn write(&mut self, k: &[f32], v: &[f32], start: usize) {
        let (d, heads) = (self.head_dim, self.kv_heads);
        let rows = k.len() / (heads * d);
        assert!(
            k.len() == v.len() && k.len() == rows * heads * d && start + rows <= self.capacity(),
            "{rows} rows at {start} in a cache of {}",
            self.capacity()
        );
        let values_at = heads * PAGE * d;
        let mut t = 0;
        while t < rows {
            let position = start + t;
            let (page, first) = (position / PAGE, position % PAGE);
            let count = (PAGE - first).min(rows - t);
            // Copies the page if another cache shares it.
            let data = &mut Arc::make_mut(&mut self.pages[page]).data;
            for i in 0..count {
                let (block, lane) = ((first + i) / POSITION_BLOCK, (first + i) % POSITION_BLOCK);
                for h in 0..heads {
                    let from = ((t + i) * heads + h) * d;
                    let keys = &mut data[(h * PAGE + block * POSITION_BLOCK) * d..];
                    for (c, &x) in k[from..from + d].iter().enumerate() {
                        keys[c * POSITION_BLOCK + lane] = x;
                    }
                    let at = values_at + (h * PAGE + first + i) * d;
                    data[at..at + d].copy_from_slice(&v[from..from + d]);
                }
            }
            t += count;
        }
    }

    /// Each page's keys and values of key/value head `h`.
    fn head_pages(&self, h: usize) -> Vec<HeadPage<'_>> {
        let part = PAGE * self.head_dim;
        let values_at = self.kv_heads * part;
        self.pages
            .iter()
            .map(|page| {
                let data = &page.data;
                (
                    &data[h * part..][..part],
                    &data[values_at + h * part..][..part],
                )
            })
            .collect()
    }

    /// Causal attention of `q` (`[seq, heads * head_dim]`, positions `start..`) over the
    /// cached positions `..start + seq`; returns `[seq, heads * head_dim]`. Query heads are
    /// shared out over the key/value heads in groups (GQA). Softmax in f32, as transformers
    /// computes it. Every query's arithmetic is the same whatever block it is in, so a
    /// prefill gives exactly the numbers of single steps. (The kernels attend a whole batch
    /// at once: [`attend_batch`].)
    #[cfg(test)]
    pub fn attend(&self, isa: Isa, q: &[f32], heads: usize, start: usize) -> Vec<f32> {
        attend_batch(isa, &[(self, q, start)], heads).remove(0)
    }
}

/// [`HostKv::attend`] for several sequences, each `(cache, q, start)`, with every
/// sequence's heads and query blocks shared out over the cores at once (one parallel region
/// for a whole decode batch); the same numbers as one sequence at a time.
pub fn attend_batch(isa: Isa, items: &[(&HostKv, &[f32], usize)], heads: usize) -> Vec<Vec<f32>> {
    struct Item<'a> {
        q: &'a [f32],
        seq: usize,
        start: usize,
        group: usize,
        d: usize,
        pages: Vec<Vec<HeadPage<'a>>>,
        blocks: usize,
    }
    let items: Vec<Item<'_>> = items
        .iter()
        .map(|&(cache, q, start)| {
            let d = cache.head_dim;
            let seq = q.len() / (heads * d);
            assert!(
                q.len() == seq * heads * d && heads.is_multiple_of(cache.kv_heads),
                "{heads} query heads over {} key/value heads",
                cache.kv_heads
            );
            assert!(start + seq <= cache.capacity(), "attention past the cache");
            Item {
                q,
                seq,
                start,
                group: heads / cache.kv_heads,
                d,
                pages: (0..cache.kv_heads).map(|h| cache.head_pages(h)).collect(),
                blocks: seq.div_ceil(QUERY_BLOCK),
            }
        })
        .collect();
    let tasks: Vec<(usize, usize, usize)> = items
        .iter()
        .enumerate()
        .flat_map(|(i, item)| {
            (0..heads * item.blocks).map(move |t| (i, t / item.blocks, t % item.blocks))
        })
        .collect();
    let results: Vec<(usize, usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(i, h, block)| {
            let item = &items[i];
            let d = item.d;
            let first = block * QUERY_BLOCK;
            let count = QUERY_BLOCK.min(item.seq - first);
            let queries: Vec<&[f32]> = (first..first + count)
                .map(|t| &item.q[(t * heads + h) * d..][..d])
                .collect();
            let out = attend_block(
                isa,
                &HeadBlock {
                    queries: &queries,
                    pages: &item.pages[h / item.group],
                    head_dim: d,
                    visible: item.start + first + 1,
                },
            );
            (i, h, first, out)
        })
        .collect();
    let mut outs: Vec<Vec<f32>> = items
        .iter()
        .map(|item| vec![0f32; item.seq * heads * item.d])
        .collect();
    for (i, h, first, values) in results {
        let d = items[i].d;
        for (r, row) in values.chunks_exact(d).enumerate() {
            outs[i][((first + r) * heads + h) * d..][..d].copy_from_slice(row);
        }
    }
    outs
}

impl OpsLayerCache for HostKv {
    fn allocated(&self) -> usize {
        self.capacity()
    }

    fn grow(&mut self, capacity: usize) {
        HostKv::grow(self, capacity)
    }

    fn fork(&self, positions: usize) -> Box<dyn OpsLayerCache> {
        Box::new(HostKv::fork(self, positions))
    }

    fn clone_box(&self) -> Box<dyn OpsLayerCache> {
        Box::new(self.clone())
    }

    fn shared_pages(&self) -> usize {
        HostKv::shared_pages(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::isa::supported;

    /// Causal attention in f64 for a query seeing the first `seen` positions.
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
            let mut kv = HostKv::new(1, d, positions, &KvMemory::default());
            kv.write(&keys, &values, 0);
            let pages = kv.head_pages(0);
            let block = HeadBlock {
                queries: &queries,
                pages: &pages,
                head_dim: d,
                visible,
            };
            for isa in supported("attention") {
                let together = attend_block(isa, &block);
                for (i, row) in together.chunks_exact(d).enumerate() {
                    let expected = reference(queries[i], &keys, &values, d, visible + i);
                    for (a, b) in row.iter().zip(&expected) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "{isa} d {d} query {i}: {a} vs {b}"
                        );
                    }
                }
                // One query at a time (decode steps) gives the block's numbers exactly.
                for i in 0..count {
                    let single = attend_block(
                        isa,
                        &HeadBlock {
                            queries: &queries[i..i + 1],
                            visible: visible + i,
                            ..block
                        },
                    );
                    assert_eq!(
                        single,
                        together[i * d..(i + 1) * d],
                        "{isa} d {d} query {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_batch_attends_with_the_numbers_of_one_sequence_at_a_time() {
        let mut next = crate::testing::uniform(4);
        let (heads, kv_heads, d) = (4, 2, 16);
        let mut caches = Vec::new();
        let mut queries = Vec::new();
        for (len, seq) in [(5, 1), (40, 3), (1, 1), (70, 2)] {
            let k: Vec<f32> = (0..len * kv_heads * d).map(|_| next()).collect();
            let v: Vec<f32> = (0..len * kv_heads * d).map(|_| next()).collect();
            let mut kv = HostKv::new(kv_heads, d, len, &KvMemory::default());
            kv.write(&k, &v, 0);
            caches.push((kv, len - seq));
            queries.push((0..seq * heads * d).map(|_| next()).collect::<Vec<f32>>());
        }
        for isa in supported("batched attention") {
            let items: Vec<(&HostKv, &[f32], usize)> = caches
                .iter()
                .zip(&queries)
                .map(|((kv, start), q)| (kv, q.as_slice(), *start))
                .collect();
            let together = attend_batch(isa, &items, heads);
            for ((kv, start), (q, out)) in caches.iter().zip(queries.iter().zip(&together)) {
                assert_eq!(&kv.attend(isa, q, heads, *start), out, "{isa}");
            }
        }
    }

    #[test]
    fn grouped_heads_share_their_key_value_head() {
        let mut next = crate::testing::uniform(3);
        let (heads, kv_heads, d, seq) = (4, 2, 16, 5);
        let k: Vec<f32> = (0..seq * kv_heads * d).map(|_| next()).collect();
        let v: Vec<f32> = (0..seq * kv_heads * d).map(|_| next()).collect();
        let q: Vec<f32> = (0..seq * heads * d).map(|_| next()).collect();
        let mut kv = HostKv::new(kv_heads, d, 8, &KvMemory::default());
        kv.write(&k, &v, 0);
        for isa in supported("grouped attention") {
            let out = kv.attend(isa, &q, heads, 0);
            for t in 0..seq {
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let keys: Vec<f32> = (0..=t)
                        .flat_map(|p| k[(p * kv_heads + g) * d..][..d].to_vec())
                        .collect();
                    let values: Vec<f32> = (0..=t)
                        .flat_map(|p| v[(p * kv_heads + g) * d..][..d].to_vec())
                        .collect();
                    let expected =
                        reference(&q[(t * heads + h) * d..][..d], &keys, &values, d, t + 1);
                    for (a, b) in out[(t * heads + h) * d..][..d].iter().zip(&expected) {
                        assert!((*a as f64 - b).abs() < 1e-5, "{isa} t {t} head {h}");
                    }
                }
            }
        }
    }
}
