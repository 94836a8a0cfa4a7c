//! Multi-head (and grouped-query) self-attention with a preallocated KV cache.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use crate::layers::{Linear, Loader, Rope};
use crate::{ComputeDtype, Result};

/// One layer's keys and values, `[1, kv_heads, capacity, head_dim]`, written in place.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Backend> LayerCache<B> {
    /// Zeros of `shape` = `[1, kv_heads, capacity, head_dim]`.
    pub(crate) fn new(shape: [usize; 4], dtype: ComputeDtype, device: &B::Device) -> Self {
        let zeros = || Some(Tensor::zeros(shape, (device, dtype.dtype())));
        Self {
            keys: zeros(),
            values: zeros(),
        }
    }

    /// Writes `k`/`v` at positions `start..` and returns the keys and values of all
    /// positions up to their end.
    fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
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
        (write(&mut self.keys, k), write(&mut self.values, v))
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
        let (k, v) = cache.append(k, v, start);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            // The causal mask is aligned bottom-right, so it is right after a cache prefix;
            // a single query sees every cached position anyway.
            is_causal: seq > 1,
        };
        let out = attention(q, k, v, None, None, options);
        let out = out
            .swap_dims(1, 2)
            .reshape([seq, self.heads * self.head_dim]);
        self.o_proj.forward(out)
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
