//! The prefix cache: keys and values of prompts seen before, in a tree over blocks of
//! tokens, so that a prompt starting the same way (every llm-jp chat starts with the same
//! system sentence; a conversation's next turn starts with the previous ones) continues
//! from there instead of being prefilled again.
//!
//! Each node stands for one block of tokens after its parent's — the model's KV block
//! ([`CausalLm::kv_block_positions`](llmjp::CausalLm::kv_block_positions)) — (a leaf may hold
//! fewer: the tail of a prompt) and holds a [`KvCache::fork`] up to its end — on the CPU
//! kernels' paged layout these share their pages with the sequence that made them and with
//! each other, so a node costs the pages of its own block only. A lookup may end inside a
//! block: the matched part of that block's page is used and the rest is overwritten (copy
//! on write). Leaves are evicted least recently used first.

use llmjp::backend::Backend;
use llmjp::crates::model::KvCache;

#[derive(Debug)]
struct Node<B: Backend> {
    parent: usize,
    /// The block's tokens (fewer than a whole block only in a leaf).
    tokens: Vec<u32>,
    children: Vec<usize>,
    /// Keys and values of every token up to the end of this block.
    cache: Option<KvCache<B>>,
    last_used: u64,
}

/// A tree over token blocks holding KV caches of prompts seen before.
#[derive(Debug)]
pub struct PrefixCache<B: Backend> {
    /// Node 0 is the root (no tokens); removed nodes are `None`.
    nodes: Vec<Option<Node<B>>>,
    free: Vec<usize>,
    /// Tokens per block.
    block: usize,
    clock: u64,
    max_blocks: usize,
    blocks: usize,
}

/// A prefix found in the cache.
#[derive(Debug)]
pub struct Hit<B: Backend> {
    /// Tokens matched.
    pub tokens: usize,
    /// A cache holding them.
    pub cache: KvCache<B>,
}

impl<B: Backend> PrefixCache<B> {
    /// An empty cache of at most `max_blocks` blocks of `block` tokens (0 blocks turns it
    /// off).
    pub fn new(block: usize, max_blocks: usize) -> Self {
        let root = Node {
            parent: 0,
            tokens: Vec::new(),
            children: Vec::new(),
            cache: None,
            last_used: 0,
        };
        Self {
            nodes: vec![Some(root)],
            free: Vec::new(),
            block: block.max(1),
            clock: 0,
            max_blocks,
            blocks: 0,
        }
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    fn node(&self, i: usize) -> &Node<B> {
        self.nodes[i].as_ref().expect("a live node")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node<B> {
        self.nodes[i].as_mut().expect("a live node")
    }

    /// The longest cached prefix of `tokens`, at most `limit` tokens, as a cache for up to
    /// `capacity` positions.
    pub fn lookup(&mut self, tokens: &[u32], limit: usize, capacity: usize) -> Option<Hit<B>> {
        self.clock += 1;
        let (mut at, mut pos) = (0, 0);
        let mut best = None;
        loop {
            let rest = &tokens[pos..];
            let mut partial = (0, 0);
            let mut whole = None;
            for &child in &self.node(at).children {
                let key = &self.node(child).tokens;
                let common = common_prefix(key, rest);
                if common == self.block {
                    whole = Some(child);
                    break;
                }
                if common > partial.0 {
                    partial = (common, child);
                }
            }
            if let Some(child) = whole {
                pos += self.block;
                at = child;
                self.node_mut(child).last_used = self.clock;
                best = Some((pos, child));
                continue;
            }
            if partial.0 > 0 {
                self.node_mut(partial.1).last_used = self.clock;
                best = Some((pos + partial.0, partial.1));
            }
            break;
        }
        let (matched, node) = best?;
        let matched = matched.min(limit);
        if matched == 0 {
            return None;
        }
        let cache = self.node(node).cache.as_ref()?.fork(matched, capacity);
        Some(Hit {
            tokens: cache.len(),
            cache,
        })
    }

    /// Records that `cache` holds the keys and values of `tokens` (its first
    /// `tokens.len()` positions).
    pub fn insert(&mut self, tokens: &[u32], cache: &KvCache<B>) {
        if self.max_blocks == 0 {
            return;
        }
        let tokens = &tokens[..tokens.len().min(cache.len())];
        self.clock += 1;
        let (mut at, mut pos) = (0, 0);
        while pos < tokens.len() {
            let block = &tokens[pos..(pos + self.block).min(tokens.len())];
            let end = pos + block.len();
            let children = self.node(at).children.clone();
            let found = children.iter().copied().find(|&c| {
                let key = &self.node(c).tokens;
                if block.len() == self.block {
                    key.as_slice() == block
                } else {
                    key.starts_with(block)
                }
            });
            let child = match found {
                Some(child) => child,
                None => {
                    // A shorter tail this block extends is superseded.
                    for c in children {
                        let node = self.node(c);
                        if node.children.is_empty() && block.starts_with(&node.tokens) {
                            self.remove(c);
                        }
                    }
                    while self.blocks >= self.max_blocks {
                        if !self.evict_one(Some(at)) {
                            return;
                        }
                    }
                    self.add(at, block.to_vec(), cache.fork(end, end))
                }
            };
            self.node_mut(child).last_used = self.clock;
            at = child;
            pos = end;
        }
    }

    fn add(&mut self, parent: usize, tokens: Vec<u32>, cache: KvCache<B>) -> usize {
        let node = Node {
            parent,
            tokens,
            children: Vec::new(),
            cache: Some(cache),
            last_used: self.clock,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.node_mut(parent).children.push(i);
        self.blocks += 1;
        i
    }

    fn remove(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a live node");
        debug_assert!(node.children.is_empty());
        self.node_mut(node.parent).children.retain(|&c| c != i);
        self.free.push(i);
        self.blocks -= 1;
    }

    /// Drops the least recently used leaf (never `keep`); false when there is none.
    pub fn evict(&mut self) -> bool {
        self.evict_one(None)
    }

    fn evict_one(&mut self, keep: Option<usize>) -> bool {
        let victim = self
            .nodes
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .filter(|(i, n)| n.children.is_empty() && Some(*i) != keep)
            .min_by_key(|(_, n)| n.last_used)
            .map(|(i, _)| i);
        match victim {
            Some(i) => {
                self.remove(i);
                true
            }
            None => false,
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use llmjp::backend::Cpu;
    use llmjp::crates::model::{CausalLm, ComputeDtype};

    use super::*;

    fn model() -> CausalLm<Cpu> {
        let dir = llmjp_testdata::fixture_dir("llama-gqa-f32-sharded");
        CausalLm::from_dir(&dir, ComputeDtype::BF16, &Default::default()).unwrap()
    }

    fn filled(model: &CausalLm<Cpu>, tokens: &[u32]) -> KvCache<Cpu> {
        let mut cache = model.new_cache(128);
        model.forward(tokens, &mut cache).unwrap();
        cache
    }

    #[test]
    fn finds_the_longest_prefix_whole_blocks_and_inside_a_block() {
        let model = model();
        let mut prefix = PrefixCache::new(model.kv_block_positions(), 16);
        let a: Vec<u32> = (0..70).map(|i| i % 90 + 3).collect();
        prefix.insert(&a, &filled(&model, &a));
        assert_eq!(prefix.blocks(), 3); // 32 + 32 + a tail of 6
                                        // Sharing 40 tokens, then different: a match ending inside the second block.
        let mut b = a[..40].to_vec();
        b.extend([1, 2, 3]);
        let hit = prefix.lookup(&b, b.len() - 1, 128).unwrap();
        assert_eq!(hit.tokens, 40);
        assert_eq!(hit.cache.len(), 40);
        // The whole of `a` as a prompt: at most all but its last token.
        assert_eq!(prefix.lookup(&a, a.len() - 1, 128).unwrap().tokens, 69);
        assert!(prefix.lookup(&[99, 98], 1, 128).is_none());
        // A longer sequence supersedes the tail it extends.
        let mut c = a.clone();
        c.extend(200..230u32);
        prefix.insert(&c, &filled(&model, &c));
        assert_eq!(prefix.blocks(), 4); // 32 + 32 + 32 + a tail of 4
        assert_eq!(prefix.lookup(&c, c.len(), 128).unwrap().tokens, 100);
    }

    #[test]
    fn evicts_least_recently_used_leaves_and_frees_their_pages() {
        let model = model();
        let mut prefix = PrefixCache::new(model.kv_block_positions(), 2);
        let a: Vec<u32> = (0..32).map(|i| i + 3).collect();
        let b: Vec<u32> = (0..32).map(|i| i + 50).collect();
        let c: Vec<u32> = (0..32).map(|i| i + 90).collect();
        for tokens in [&a, &b] {
            prefix.insert(tokens, &filled(&model, tokens));
        }
        let held = model.kv_memory().bytes();
        assert!(held > 0);
        prefix.lookup(&a, 31, 128).unwrap(); // `a` is now the more recent
        prefix.insert(&c, &filled(&model, &c)); // evicts `b`
        assert_eq!(prefix.blocks(), 2);
        assert!(prefix.lookup(&b, 31, 128).is_none());
        assert!(prefix.lookup(&a, 31, 128).is_some());
        assert_eq!(model.kv_memory().bytes(), held);
        while prefix.evict() {}
        assert_eq!(model.kv_memory().bytes(), 0);
    }
}
