//! The reference ops, burn tensor ops on every backend: the bodies of
//! [`DecoderOps`](super::DecoderOps)' defaults.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};

use super::batch::{Heads, LayerSeq, SeqSpan};
use crate::cache::LayerCache;
use crate::linear::{DeviceQuantWeight, Linear, Loader};
use crate::params::{RmsNorm, Rope};
use crate::{ModelError, Result};

/// RMSNorm of every row: normalised in f32, cast back, then scaled (as transformers).
pub(crate) fn rms_norm<B: Backend>(x: Tensor<B, 2>, norm: &RmsNorm<B>) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let variance = x.clone().powi_scalar(2).mean_dim(1);
    let normed = x * (variance + norm.eps).sqrt().recip();
    // The weight is loaded in the activation dtype.
    normed.cast(dtype) * norm.weight.clone().unsqueeze_dim::<2>(0)
}

/// Rotates `x` (`[rows, heads * head_dim]`) by each row's position (rotate-half).
pub(crate) fn rope<B: Backend>(
    x: Tensor<B, 2>,
    heads: usize,
    rope: &Rope<B>,
    batch: &[SeqSpan],
) -> Tensor<B, 2> {
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
    (x * cos + rotated * sin).reshape([rows, width])
}

/// Writes each sequence's keys and values into its tensor cache, then burn's attention of
/// `q` over the cached positions (causal within the new rows).
pub(crate) fn attention<B: Backend>(
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
        let out = burn_attention(
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

/// SwiGLU's activation: `silu(gate) * up`.
pub(crate) fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}

/// The LM head in the activations' dtype, the logits cast to f32.
pub(crate) fn lm_head<B: Backend>(x: Tensor<B, 2>, head: &Linear<B>) -> Result<Tensor<B, 2>> {
    Ok(head.forward(x)?.cast(FloatDType::F32))
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
pub(crate) fn load_weight<B: Backend>(
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
