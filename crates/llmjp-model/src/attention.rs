//! Multi-head (and grouped-query) self-attention with a preallocated KV cache.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use std::sync::Arc;

use burn::tensor::{DType, TensorData};

use crate::layers::{to_f32_vec, Linear, Loader, Rope};
use crate::packed::PackedLinear;
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
        if let (Linear::Packed(q), Linear::Packed(k), Linear::Packed(v), Linear::Packed(o)) =
            (&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj)
        {
            return self.forward_host([q, k, v, o], x, rope, cache, start);
        }
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

    /// The CPU kernels' path: projections, RoPE and the head layout on the host; burn only
    /// for the cache and the attention itself.
    fn forward_host(
        &self,
        [q_w, k_w, v_w, o_w]: [&Arc<PackedLinear>; 4],
        x: Tensor<B, 2>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Result<Tensor<B, 2>> {
        let seq = x.dims()[0];
        let device = x.device();
        let input = to_f32_vec(x)?;
        let d = self.head_dim;
        let heads = |values: Vec<f32>, n: usize, rotate: bool| {
            let data = TensorData::new(
                rope.to_heads(&values, seq, n, start, rotate),
                [1, n, seq, d],
            );
            Tensor::<B, 4>::from_data(data, (&device, DType::F32))
        };
        let q = heads(q_w.matmul(&input, seq), self.heads, true);
        let k = heads(k_w.matmul(&input, seq), self.kv_heads, true);
        let v = heads(v_w.matmul(&input, seq), self.kv_heads, false);
        let out = self.attend(q, k, v, cache, start, seq);
        // [1, heads, seq, d] → [seq, heads * d] on the host.
        let out = to_f32_vec(out)?;
        let mut rows = vec![0f32; out.len()];
        for h in 0..self.heads {
            for t in 0..seq {
                rows[t * self.heads * d + h * d..][..d]
                    .copy_from_slice(&out[(h * seq + t) * d..][..d]);
            }
        }
        let projected = o_w.matmul(&rows, seq);
        Ok(Tensor::from_data(
            TensorData::new(projected, [seq, o_w.out_features()]),
            (&device, DType::F32),
        ))
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
