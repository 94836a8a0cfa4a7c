//! [`Reference`]: the op layer on burn tensor ops, for every backend.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};

use super::{moe, DecoderOps, Heads, LayerSeq, SeqSpan};
use crate::cache::{KvMemory, LayerCache};
use crate::layers::{Mlp, RmsNorm, Rope};
use crate::linear::{DeviceQuantWeight, Linear, Loader};
use crate::{ComputeDtype, ModelError, Result};

/// The op layer written with burn's tensor ops: runs on every backend, weights and
/// activations in the compute dtype, norms and softmaxes in f32 as transformers computes
/// them. The f32 parity tests run it; other ops are measured against it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl<B: Backend> DecoderOps<B> for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn activation_dtype(&self, weights: ComputeDtype) -> ComputeDtype {
        weights
    }

    fn load_linear(
        &self,
        loader: &Loader<'_, B>,
        name: &str,
        out: usize,
        inputs: usize,
    ) -> Result<Linear<B>> {
        load_weight(loader, name, out, inputs)
    }

    fn load_embedding(
        &self,
        loader: &Loader<'_, B>,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear<B>> {
        load_weight(loader, name, vocab, hidden)
    }

    fn new_layer_cache(
        &self,
        heads: Heads,
        capacity: usize,
        dtype: ComputeDtype,
        device: &B::Device,
        memory: &KvMemory,
    ) -> LayerCache<B> {
        let shape = [1, heads.kv_heads, capacity, heads.head_dim];
        LayerCache::zeros(shape, dtype, device, memory)
    }

    fn embed(
        &self,
        table: &Linear<B>,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        table.rows(ids, dtype, device)
    }

    fn rms_norm(&self, x: Tensor<B, 2>, norm: &RmsNorm<B>) -> Result<Tensor<B, 2>> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(1);
        let normed = x * (variance + norm.eps).sqrt().recip();
        // The weight is loaded in the activation dtype.
        Ok(normed.cast(dtype) * norm.weight.clone().unsqueeze_dim::<2>(0))
    }

    fn linear(&self, x: Tensor<B, 2>, weight: &Linear<B>) -> Result<Tensor<B, 2>> {
        weight.forward(x)
    }

    fn rope(
        &self,
        x: Tensor<B, 2>,
        heads: usize,
        rope: &Rope<B>,
        batch: &[SeqSpan],
    ) -> Result<Tensor<B, 2>> {
        let [rows, width] = x.dims();
        let d = width / heads;
        let positions: Vec<i64> = batch
            .iter()
            .flat_map(|s| s.positions())
            .map(|p| p as i64)
            .collect();
        let device = x.device();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [rows]), &device);
        let (cos, sin) = rope.tables();
        let cos = cos.select(0, positions.clone()).reshape([rows, 1, d]);
        let sin = sin.select(0, positions).reshape([rows, 1, d]);
        let x = x.reshape([rows, heads, d]);
        let x1 = x.clone().narrow(2, 0, d / 2);
        let x2 = x.clone().narrow(2, d / 2, d / 2);
        // rotate_half(x) = cat(-x2, x1)
        let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
        Ok((x * cos + rotated * sin).reshape([rows, width]))
    }

    fn attention(
        &self,
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        heads: Heads,
        batch: &mut [LayerSeq<'_, B>],
    ) -> Result<Tensor<B, 2>> {
        let d = heads.head_dim;
        let mut outputs = Vec::with_capacity(batch.len());
        for seq in batch.iter_mut() {
            let (rows, n) = (seq.span.rows.clone(), seq.span.len());
            // [n, heads * d] → [1, heads, n, d]
            let split = |t: &Tensor<B, 2>, count: usize| {
                t.clone()
                    .slice([rows.clone(), 0..count * d])
                    .reshape([1, n, count, d])
                    .swap_dims(1, 2)
            };
            let q = split(&q, heads.heads);
            let (k, v) = append(
                seq.cache,
                split(&k, heads.kv_heads),
                split(&v, heads.kv_heads),
                seq.span.start,
            )?;
            let groups = heads.heads / heads.kv_heads;
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                // The causal mask is aligned bottom-right, so it is right after a cache
                // prefix; a single query sees every cached position anyway.
                is_causal: n > 1,
            };
            let out = attention(
                q,
                repeat_kv(k, groups),
                repeat_kv(v, groups),
                None,
                None,
                options,
            );
            outputs.push(out.swap_dims(1, 2).reshape([n, heads.heads * d]));
        }
        Ok(if outputs.len() == 1 {
            outputs.remove(0)
        } else {
            Tensor::cat(outputs, 0)
        })
    }

    fn swiglu(&self, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        Ok(silu(gate) * up)
    }

    fn moe(
        &self,
        x: Tensor<B, 2>,
        router: &Linear<B>,
        experts: &[Mlp<B>],
        top_k: usize,
    ) -> Result<Tensor<B, 2>> {
        moe::dispatch(self, x, router, experts, top_k)
    }

    fn lm_head(&self, x: Tensor<B, 2>, head: &Linear<B>) -> Result<Tensor<B, 2>> {
        Ok(head.forward(x)?.cast(FloatDType::F32))
    }
}

/// Writes `k`/`v` (`[1, kv_heads, n, d]`) at positions `start..` of a tensor cache and
/// returns the keys and values of all positions up to their end.
pub(crate) fn append<B: Backend>(
    cache: &mut LayerCache<B>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    start: usize,
) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
    let LayerCache::Tensors {
        keys,
        values,
        charge,
    } = cache
    else {
        return Err(ModelError::CacheMismatch(
            "a host cache given to the reference ops".into(),
        ));
    };
    let end = start + k.dims()[2];
    // Tensors a fork shares are copied by this write: count the copy.
    charge.unshare();
    let write = |slot: &mut Option<Tensor<B, 4>>, new: Tensor<B, 4>| {
        // Taking the tensor out leaves it uniquely owned, so the backend can write in
        // place instead of copying the whole cache.
        let cache = slot
            .take()
            .ok_or_else(|| ModelError::CacheMismatch("a cache left half-written".into()))?;
        let [_, heads, _, dim] = cache.dims();
        let cache = cache.slice_assign([0..1, 0..heads, start..end, 0..dim], new);
        let visible = cache.clone().slice([0..1, 0..heads, 0..end, 0..dim]);
        *slot = Some(cache);
        Ok::<_, ModelError>(visible)
    };
    Ok((write(keys, k)?, write(values, v)?))
}

/// Grouped-query attention: each key/value head serves `groups` query heads.
fn repeat_kv<B: Backend>(t: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return t;
    }
    let [_, kv_heads, len, dim] = t.dims();
    t.reshape([1, kv_heads, 1, len, dim])
        .expand([1, kv_heads, groups, len, dim])
        .reshape([1, kv_heads * groups, len, dim])
}

/// A weight on the device: quantized where [`Loader::quantization`] says so (dequantized as
/// each product runs), else dense in the weights' dtype.
fn load_weight<B: Backend>(
    loader: &Loader<'_, B>,
    name: &str,
    out: usize,
    inputs: usize,
) -> Result<Linear<B>> {
    Ok(match loader.quantization(name, out, inputs)? {
        Some(format) => {
            let matrix = loader.quant_matrix(name, out, inputs, format)?;
            Linear::new(DeviceQuantWeight::new(&matrix, loader.device))
        }
        None => loader.dense(name, out, inputs)?,
    })
}
