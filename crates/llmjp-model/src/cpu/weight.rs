//! Weights the CPU kernels multiply: a host matrix ([`Bf16Matrix`], [`QuantMatrix`]) and the
//! instruction set to run, as a [`Weight`] of the CPU backend.

use std::fmt;
use std::sync::Arc;

use burn::tensor::Tensor;

use super::host::{host_tensor, Cpu, HostRows};
use super::kernels::Isa;
use crate::linear::Weight;
use crate::matrix::{Bf16Matrix, InterleavedKQuantMatrix, InterleavedQuantMatrix, QuantMatrix};
use crate::{ComputeDtype, Result};

/// A `[rows, cols]` matrix on the host that the CPU kernels multiply: bf16
/// ([`Bf16Matrix`]) or block-quantized ([`QuantMatrix`], [`InterleavedQuantMatrix`],
/// [`InterleavedKQuantMatrix`]).
pub trait HostMatrix: fmt::Debug + Send + Sync {
    /// Rows (output features).
    fn rows(&self) -> usize;
    /// Columns (input features).
    fn cols(&self) -> usize;
    /// `x @ self.T` for `rows` f32 activation rows, with the kernels of `isa`.
    fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32>;
    /// Row `r` in f32 (an embedding lookup).
    fn row_f32(&self, r: usize, out: &mut [f32]);
}

macro_rules! host_matrix {
    ($matrix:ty) => {
        impl HostMatrix for $matrix {
            fn rows(&self) -> usize {
                <$matrix>::rows(self)
            }
            fn cols(&self) -> usize {
                <$matrix>::cols(self)
            }
            fn matmul(&self, isa: Isa, x: &[f32], rows: usize) -> Vec<f32> {
                <$matrix>::matmul(self, isa, x, rows)
            }
            fn row_f32(&self, r: usize, out: &mut [f32]) {
                <$matrix>::row_f32(self, r, out)
            }
        }
    };
}
host_matrix!(Bf16Matrix);
host_matrix!(QuantMatrix);
host_matrix!(InterleavedQuantMatrix);
host_matrix!(InterleavedKQuantMatrix);

/// A host matrix multiplied by the CPU kernels of one instruction set on f32 activations.
#[derive(Debug)]
pub struct HostWeight<M> {
    matrix: Arc<M>,
    isa: Isa,
}

impl<M> Clone for HostWeight<M> {
    fn clone(&self) -> Self {
        Self {
            matrix: self.matrix.clone(),
            isa: self.isa,
        }
    }
}

/// bf16 `[out, in]` on the host (in place in the mapped checkpoint where it stores bf16).
pub type Bf16Weight = HostWeight<Bf16Matrix>;

/// Block-quantized `[out, in]` on the host (in place from a quantized checkpoint, or
/// quantized on load); the activations are quantized to 8 bits per block as they go.
pub type QuantWeight = HostWeight<QuantMatrix>;

/// Block-quantized `[out, in]` repacked for the 8-bit dot-product kernels (AVX-512 VNNI).
pub type InterleavedQuantWeight = HostWeight<InterleavedQuantMatrix>;

/// K-quant `[out, in]` repacked for the 8-bit dot-product kernels (AVX-512 VNNI).
pub type InterleavedKQuantWeight = HostWeight<InterleavedKQuantMatrix>;

impl<M: HostMatrix> HostWeight<M> {
    /// A weight multiplied by the kernels of `isa`.
    pub fn new(matrix: M, isa: Isa) -> Self {
        Self {
            matrix: Arc::new(matrix),
            isa,
        }
    }
}

impl<M: HostMatrix> Weight<Cpu> for HostWeight<M> {
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
