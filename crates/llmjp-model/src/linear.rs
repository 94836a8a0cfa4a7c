//! Weights behind one interface: a [`Linear`] layer's weight is a value that knows its
//! format and how to multiply on its backend (after mistral.rs's `QuantMethod`).
//!
//! - [`DenseWeight`]: a burn tensor in a float dtype, on any backend.
//! - [`Bf16Weight`]: bf16 on the host, used in place from the memory-mapped checkpoint, run
//!   by the CPU kernels on f32 activations (burn-flex only: on another backend it cannot be
//!   built).
//!
//! A new format (int8 next) is one more implementation of [`Weight`], and the
//! [`DecoderOps::load_linear`](crate::ops::DecoderOps::load_linear) of the ops that run it.

use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llmjp_weights::{bf16, f16, Checkpoint, Dtype, Layout};

use crate::backend::Cpu;
use crate::dtype::float_dtype;
use crate::kernels::{Bf16Matrix, Isa};
use crate::ops::cpu::{host_tensor, HostRows};
use crate::{ComputeDtype, Result};

/// A `[out, in]` matrix in some format, and how to multiply by it on backend `B`.
pub trait Weight<B: Backend>: fmt::Debug + Send + Sync {
    /// `[out, in]`.
    fn shape(&self) -> [usize; 2];

    /// `x @ w.T`: `[rows, in]` → `[rows, out]`, in `x`'s dtype.
    fn forward(&self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>>;

    /// Rows `ids` of the matrix (an embedding lookup), `[ids.len(), in]` in `dtype`.
    fn rows(&self, ids: &[u32], dtype: ComputeDtype, device: &B::Device) -> Result<Tensor<B, 2>>;
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
}

/// bf16 `[out, in]` on the host (in place in the mapped checkpoint where it stores bf16),
/// multiplied by the CPU kernels of one instruction set on f32 activations.
#[derive(Debug, Clone)]
pub struct Bf16Weight {
    matrix: Arc<Bf16Matrix>,
    isa: Isa,
}

impl Bf16Weight {
    /// A bf16 weight multiplied by the kernels of `isa`.
    pub fn new(matrix: Bf16Matrix, isa: Isa) -> Self {
        Self {
            matrix: Arc::new(matrix),
            isa,
        }
    }

    /// The bf16 matrix.
    pub fn matrix(&self) -> &Bf16Matrix {
        &self.matrix
    }
}

impl Weight<Cpu> for Bf16Weight {
    fn shape(&self) -> [usize; 2] {
        [self.matrix.rows(), self.matrix.cols()]
    }

    fn forward(&self, x: Tensor<Cpu, 2>) -> Result<Tensor<Cpu, 2>> {
        let [rows, _] = x.dims();
        let x = HostRows::new(x);
        let out = self.matrix.matmul(self.isa, x.values(), rows);
        Ok(host_tensor(out, [rows, self.matrix.rows()]))
    }

    fn rows(
        &self,
        ids: &[u32],
        _dtype: ComputeDtype,
        _device: &burn_flex::FlexDevice,
    ) -> Result<Tensor<Cpu, 2>> {
        let cols = self.matrix.cols();
        let mut values = vec![0f32; ids.len() * cols];
        for (dst, &id) in values.chunks_mut(cols).zip(ids) {
            self.matrix.row_f32(id as usize, dst);
        }
        Ok(host_tensor(values, [ids.len(), cols]))
    }
}

/// Reads checkpoint tensors for a model on `device`: dense tensors in a float dtype, or bf16
/// matrices for the CPU kernels.
pub struct Loader<'a, B: Backend> {
    /// Where the weights are read from.
    pub checkpoint: &'a Checkpoint,
    /// Where they are put.
    pub device: &'a B::Device,
    /// The dtype the weights were asked in.
    pub weights: ComputeDtype,
    /// The dtype activations (and norms) are kept in.
    pub activations: ComputeDtype,
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

    /// A `[rows, cols]` bf16 matrix: in place in the mapped file when it stores bf16,
    /// converted otherwise (a non-float dtype is an error naming the tensor).
    pub fn bf16_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Bf16Matrix> {
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
