//! Weights behind one interface: a [`Linear`] layer's weight is a value that knows its
//! format and how to multiply on its backend (after mistral.rs's `QuantMethod`).
//!
//! - [`DenseWeight`]: a burn tensor in a float dtype, on any backend.
//! - the CPU backend's host weights (`cpu/weight.rs`): a [`Bf16Matrix`] used in place from
//!   the memory-mapped checkpoint, or a [`QuantMatrix`] of Q8_0 / Q4_0 blocks (in place from
//!   a quantized checkpoint, or quantized on load), run by the CPU kernels on f32
//!   activations.
//! - [`DeviceQuantWeight`]: the same blocks on any backend's device as 8-bit integers and
//!   scales, dequantized as each product runs (burn's generic path). The cubecl kernels
//!   (CUDA, Vulkan) keep the blocks as stored instead: `cube::CubeQuantWeight`.
//!
//! A new format is one more implementation of [`Weight`], and the
//! [`DecoderOps::load_linear`](crate::ops::DecoderOps::load_linear) of the ops that run it.
//! Which tensors are quantized, and how, is decided in one place:
//! [`Loader::quantization`].

use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use llmjp_weights::quant::{BlockFormat, BLOCK, SCALE_SUFFIX};
use llmjp_weights::{bf16, f16, Checkpoint, Dtype, Layout, TensorView};

use crate::dtype::float_dtype;
use crate::matrix::{Bf16Matrix, QuantMatrix};
use crate::{ComputeDtype, ModelError, Result};

/// A `[out, in]` matrix in some format, and how to multiply by it on backend `B`.
pub trait Weight<B: Backend>: fmt::Debug + Send + Sync {
    /// `[out, in]`.
    fn shape(&self) -> [usize; 2];

    /// `x @ w.T`: `[rows, in]` → `[rows, out]`, in `x`'s dtype.
    fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>>;

    /// Rows `ids` of the matrix (an embedding lookup), `[ids.len(), in]` in `dtype`.
    fn rows(&self, ids: &[u32], dtype: ComputeDtype, device: &B::Device) -> Result<Tensor<B, 2>>;

    /// The `[out, in]` float tensor itself, for a format that is one (what a fused
    /// kernel reads directly); `None` for the others.
    fn dense(&self) -> Option<&Tensor<B, 2>> {
        None
    }
}

/// A bias-free linear layer (or an embedding table, or a head tied to one): a shared
/// [`Weight`] of any format.
#[derive(Debug)]
pub struct Linear<B: Backend>(Arc<dyn Weight<B>>);

impl<B: Backend> Clone for Linear<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: Backend> Linear<B> {
    /// A linear layer over any weight format.
    pub fn new(weight: impl Weight<B> + 'static) -> Self {
        Self(Arc::new(weight))
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        self.0.shape()
    }

    /// `x @ w.T`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        self.0.forward(x)
    }

    /// The weight as a plain float tensor, where its format is one ([`Weight::dense`]).
    pub fn dense(&self) -> Option<&Tensor<B, 2>> {
        self.0.dense()
    }

    /// Rows `ids` (an embedding lookup).
    pub fn rows(
        &self,
        ids: &[u32],
        dtype: ComputeDtype,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        self.0.rows(ids, dtype, device)
    }
}

/// A float tensor `[out, in]` as stored, on any backend; multiplied in its own dtype.
#[derive(Debug, Clone)]
pub struct DenseWeight<B: Backend> {
    weight: Tensor<B, 2>,
}

impl<B: Backend> DenseWeight<B> {
    /// A weight from a `[out, in]` tensor.
    pub fn new(weight: Tensor<B, 2>) -> Self {
        Self { weight }
    }
}

impl<B: Backend> Weight<B> for DenseWeight<B> {
    fn shape(&self) -> [usize; 2] {
        self.weight.dims()
    }

    fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let (dtype, own) = (x.dtype(), self.weight.dtype());
        let y = if dtype == own {
            x.matmul(self.weight.clone().transpose())
        } else {
            x.cast(float_dtype(own))
                .matmul(self.weight.clone().transpose())
                .cast(float_dtype(dtype))
        };
        Ok(y)
    }

    fn rows(&self, ids: &[u32], dtype: ComputeDtype, device: &B::Device) -> Result<Tensor<B, 2>> {
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let n = ids.len();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
        Ok(self.weight.clone().select(0, ids).cast(dtype.float()))
    }

    fn dense(&self) -> Option<&Tensor<B, 2>> {
        Some(&self.weight)
    }
}

/// Block-quantized `[out, in]` on any backend's device: the values as 8-bit integers and one
/// f32 scale per block, dequantized to the activations' dtype for each product (burn's
/// generic path; the memory at rest is a quarter of f32's, plus one dense matrix while a
/// product runs).
#[derive(Debug, Clone)]
pub struct DeviceQuantWeight<B: Backend> {
    /// `[out, blocks, 32]`, i8.
    values: Tensor<B, 3, Int>,
    /// `[out, blocks, 1]`, f32.
    scales: Tensor<B, 3>,
    format: BlockFormat,
}

impl<B: Backend> DeviceQuantWeight<B> {
    /// Puts a host matrix's values and scales on `device`.
    pub fn new(matrix: &QuantMatrix, device: &B::Device) -> Self {
        let (rows, blocks) = (matrix.rows(), matrix.cols() / BLOCK);
        let mut values = vec![0i8; rows * matrix.cols()];
        let mut scales = vec![0f32; rows * blocks];
        for r in 0..rows {
            let row = &mut values[r * matrix.cols()..(r + 1) * matrix.cols()];
            matrix.row_values(r, row, &mut scales[r * blocks..(r + 1) * blocks]);
        }
        let values = TensorData::new(values, [rows, blocks, BLOCK]);
        let scales = TensorData::new(scales, [rows, blocks, 1]);
        Self {
            values: Tensor::from_data(values, (device, DType::I8)),
            scales: Tensor::from_data(scales, (device, DType::F32)),
            format: matrix.format(),
        }
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }
}

impl<B: Backend> DeviceQuantWeight<B> {
    /// The dense `[out, in]` matrix in `dtype`.
    fn dense(&self, dtype: burn::tensor::FloatDType) -> Tensor<B, 2> {
        let [rows, blocks, _] = self.values.dims();
        (self.values.clone().float() * self.scales.clone())
            .reshape([rows, blocks * BLOCK])
            .cast(dtype)
    }
}

impl<B: Backend> Weight<B> for DeviceQuantWeight<B> {
    fn shape(&self) -> [usize; 2] {
        let [rows, blocks, _] = self.values.dims();
        [rows, blocks * BLOCK]
    }

    fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let w = self.dense(float_dtype(x.dtype()));
        Ok(x.matmul(w.transpose()))
    }

    fn rows(&self, ids: &[u32], dtype: ComputeDtype, device: &B::Device) -> Result<Tensor<B, 2>> {
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let n = ids.len();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
        let [_, blocks, _] = self.values.dims();
        let values = self.values.clone().select(0, ids.clone()).float();
        let rows = values * self.scales.clone().select(0, ids);
        Ok(rows.reshape([n, blocks * BLOCK]).cast(dtype.float()))
    }
}

/// Reads checkpoint tensors for a model on `device`: dense tensors in a float dtype, or host
/// matrices ([`Bf16Matrix`], [`QuantMatrix`]) for ops that keep weights so.
pub struct Loader<'a, B: Backend> {
    /// Where the weights are read from.
    pub checkpoint: &'a Checkpoint,
    /// Where they are put.
    pub device: &'a B::Device,
    /// The dtype the weights were asked in.
    pub weights: ComputeDtype,
    /// The dtype activations (and norms) are kept in.
    pub activations: ComputeDtype,
    /// The block format to quantize float linear weights to, if any.
    pub quantize: Option<BlockFormat>,
}

impl<B: Backend> Loader<'_, B> {
    /// Tensor `name` of `shape`, converted to `dtype` on the device.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        dtype: ComputeDtype,
    ) -> Result<Tensor<B, D>> {
        let ckpt = self.checkpoint;
        let data = match dtype {
            ComputeDtype::F32 => {
                TensorData::new(ckpt.read::<f32>(name, &shape, Layout::AsStored)?, shape)
            }
            ComputeDtype::F16 => {
                TensorData::new(ckpt.read::<f16>(name, &shape, Layout::AsStored)?, shape)
            }
            ComputeDtype::BF16 => {
                TensorData::new(ckpt.read::<bf16>(name, &shape, Layout::AsStored)?, shape)
            }
        };
        Ok(Tensor::from_data(data, (self.device, dtype.dtype())))
    }

    /// A `[out, in]` weight as a dense tensor in the weights' dtype.
    pub fn dense(&self, name: &str, out: usize, inputs: usize) -> Result<Linear<B>> {
        Ok(Linear::new(DenseWeight::new(self.tensor(
            name,
            [out, inputs],
            self.weights,
        )?)))
    }

    /// The format linear weight `name` (`[rows, cols]`) runs in (the weight-format policy):
    /// the stored one when the checkpoint holds it quantized, else [`quantize`](Self::quantize),
    /// except for MoE routers (float), the embedding table and the LM head (Q8_0 when the rest
    /// is 4-bit) and matrices whose rows are not whole blocks of 32 (float).
    pub fn quantization(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<BlockFormat>> {
        quantization(self.checkpoint, self.quantize, name, rows, cols)
    }

    /// A `[rows, cols]` matrix in `format`: in place in the mapped file when the checkpoint
    /// stores it so, else quantized from its float values (rows in parallel, the source's
    /// pages released as it goes).
    pub fn quant_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        format: BlockFormat,
    ) -> Result<QuantMatrix> {
        quant_matrix(self.checkpoint, name, rows, cols, format)
    }

    /// A `[rows, cols]` bf16 matrix: in place in the mapped file when it stores bf16,
    /// converted otherwise (K-quant super-blocks dequantized; a non-float dtype is an error
    /// naming the tensor).
    pub fn bf16_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Bf16Matrix> {
        if self.checkpoint.kquant(name).is_some() {
            // K-quant super-blocks, dequantized (not yet multiplied as they are stored).
            let values = self
                .checkpoint
                .read::<bf16>(name, &[rows, cols], Layout::AsStored)?;
            return Ok(Bf16Matrix::from_vec(values, rows, cols));
        }
        let view = self.checkpoint.view(name, &[rows, cols])?;
        Ok(if view.dtype() == Dtype::BF16 {
            Bf16Matrix::mapped(view, rows, cols)
        } else {
            let values = self
                .checkpoint
                .read::<bf16>(name, &[rows, cols], Layout::AsStored)?;
            Bf16Matrix::from_vec(values, rows, cols)
        })
    }
}

/// Row `r` of a float tensor `[rows, cols]` as f32, for quantizing it row by row; a
/// non-float dtype is an error naming the tensor.
fn float_row_reader<'a>(
    view: &'a TensorView,
    name: &str,
) -> Result<impl Fn(usize, &mut [f32]) + Sync + 'a> {
    let width = match view.dtype() {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        other => {
            return Err(ModelError::InvalidQuantized(format!(
                "{name}: cannot quantize a tensor stored as {other:?}"
            )))
        }
    };
    let dtype = view.dtype();
    Ok(move |r: usize, out: &mut [f32]| {
        let cols = out.len();
        let bytes = &view.bytes()[r * cols * width..(r + 1) * cols * width];
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(width)) {
            *o = match dtype {
                Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            };
        }
    })
}

/// The format linear weight `name` (`[rows, cols]`) of `checkpoint` runs in when float
/// weights are quantized to `quantize`: the stored one when the checkpoint holds it
/// quantized, else `quantize`, except for
///
/// - MoE routers (`…block_sparse_moe.gate.weight`), which stay in float;
/// - the embedding table and the LM head, kept at Q8_0 when the rest is 4-bit (as
///   llama.cpp keeps its output matrix at higher precision);
/// - matrices whose rows are not whole blocks of 32, which stay in float.
pub(crate) fn quantization(
    checkpoint: &Checkpoint,
    quantize: Option<BlockFormat>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<BlockFormat>> {
    if let Some(stored) = stored_format(checkpoint, name, rows, cols)? {
        return Ok(Some(stored));
    }
    let Some(format) = quantize else {
        return Ok(None);
    };
    if !cols.is_multiple_of(BLOCK) {
        return Ok(None);
    }
    Ok(match WeightRole::of_tensor(name) {
        WeightRole::Router => None,
        WeightRole::Embedding | WeightRole::LmHead => Some(BlockFormat::Q8_0),
        WeightRole::Projection => Some(format),
    })
}

/// What a linear weight does in the decoder, which decides the format it runs in; read
/// once from the tensor's name (the names transformers' Llama and Mixtral use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightRole {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// `lm_head.weight`.
    LmHead,
    /// A MoE router, `…block_sparse_moe.gate.weight`.
    Router,
    /// Every other matrix: attention and MLP / expert projections.
    Projection,
}

impl WeightRole {
    pub(crate) fn of_tensor(name: &str) -> Self {
        match name {
            "model.embed_tokens.weight" => Self::Embedding,
            "lm_head.weight" => Self::LmHead,
            _ if name.ends_with("block_sparse_moe.gate.weight") => Self::Router,
            _ => Self::Projection,
        }
    }
}

/// The format `name` is stored in when `checkpoint` holds it quantized (values beside
/// `{name}_scale`): Q8_0 as `I8 [rows, cols]`, Q4_0 as `U8 [rows, cols / 2]`, scales
/// `F16 [rows, cols / 32]`; anything else is an error naming the tensor.
pub(crate) fn stored_format(
    checkpoint: &Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<BlockFormat>> {
    let scale_name = format!("{name}{SCALE_SUFFIX}");
    if !checkpoint.contains(&scale_name) {
        return Ok(None);
    }
    let invalid = |what: String| ModelError::InvalidQuantized(format!("{name}: {what}"));
    let values = checkpoint.meta(name)?;
    let scales = checkpoint.meta(&scale_name)?;
    let format = match values.dtype {
        Dtype::I8 => BlockFormat::Q8_0,
        Dtype::U8 => BlockFormat::Q4_0,
        other => {
            return Err(invalid(format!(
                "quantized values stored as {other:?}, expected I8 (q8_0) or U8 (q4_0)"
            )))
        }
    };
    if !cols.is_multiple_of(BLOCK) {
        return Err(invalid(format!(
            "{cols} columns are not whole blocks of {BLOCK}"
        )));
    }
    let expected = [rows, cols / BLOCK * format.data_bytes()];
    if values.shape != expected {
        return Err(invalid(format!(
            "{format} values of shape {:?}, expected {expected:?}",
            values.shape
        )));
    }
    let expected = [rows, cols / BLOCK];
    if scales.dtype != Dtype::F16 || scales.shape != expected {
        return Err(invalid(format!(
            "scales {:?} {:?}, expected F16 {expected:?}",
            scales.dtype, scales.shape
        )));
    }
    Ok(Some(format))
}

/// A `[rows, cols]` matrix of `checkpoint` in `format`: in place in the mapped file when
/// the checkpoint stores it so, else quantized from its float values (in parallel, row by
/// row, the source's pages released afterwards).
pub(crate) fn quant_matrix(
    checkpoint: &Checkpoint,
    name: &str,
    rows: usize,
    cols: usize,
    format: BlockFormat,
) -> Result<QuantMatrix> {
    if let Some(stored) = stored_format(checkpoint, name, rows, cols)? {
        if stored != format {
            return Err(ModelError::InvalidQuantized(format!(
                "{name} is stored in {stored}, not {format}"
            )));
        }
        let shape = [rows, cols / BLOCK * format.data_bytes()];
        let values = checkpoint.view(name, &shape)?;
        let scales = checkpoint.view(&format!("{name}{SCALE_SUFFIX}"), &[rows, cols / BLOCK])?;
        return QuantMatrix::mapped(format, values, scales, rows, cols);
    }
    if checkpoint.kquant(name).is_some() {
        // K-quant super-blocks: dequantized (exactly), then quantized to `format`.
        let values = checkpoint.read::<f32>(name, &[rows, cols], Layout::AsStored)?;
        return QuantMatrix::quantize(format, &values, rows, cols);
    }
    let view = checkpoint.view(name, &[rows, cols])?;
    let read = float_row_reader(&view, name)?;
    let row_bytes = view.bytes().len() / rows.max(1);
    // Each chunk's source pages go as soon as it is quantized: peak memory stays the
    // quantized model plus one chunk.
    let release = |done: std::ops::Range<usize>| {
        view.release_bytes(done.start * row_bytes..done.end * row_bytes)
    };
    QuantMatrix::quantize_with(format, rows, cols, read, release)
}

#[cfg(test)]
mod tests {
    use super::WeightRole;

    #[test]
    fn weight_roles_are_read_from_transformers_names() {
        for (name, role) in [
            ("model.embed_tokens.weight", WeightRole::Embedding),
            ("lm_head.weight", WeightRole::LmHead),
            (
                "model.layers.3.block_sparse_moe.gate.weight",
                WeightRole::Router,
            ),
            (
                "model.layers.3.block_sparse_moe.experts.1.w1.weight",
                WeightRole::Projection,
            ),
            (
                "model.layers.0.mlp.gate_proj.weight",
                WeightRole::Projection,
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                WeightRole::Projection,
            ),
        ] {
            assert_eq!(WeightRole::of_tensor(name), role, "{name}");
        }
    }
}
