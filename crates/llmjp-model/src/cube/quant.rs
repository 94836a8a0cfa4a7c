//! [`CubeQuantWeight`]: a block-quantized linear weight (Q8_0, Q4_0) on a cubecl backend,
//! run by the kernels of [`super::quant_kernels`].

use std::fmt;
use std::marker::PhantomData;

use burn::tensor::{DType, Tensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use llmjp_weights::quant::{BlockFormat, BLOCK};

use super::launch::{
    elementwise_count, empty_f32, f32_cube, feature_grid, gemm, tensor, upload_u32, Cube,
    ELEMENTWISE_UNITS, GEMV_MAX_ROWS, UNITS,
};
use super::quant_kernels;
use crate::dtype::float_dtype;
use crate::linear::Weight;
use crate::matrix::QuantMatrix;
use crate::{ComputeDtype, ModelError, Result};

/// Words per vector of the quantized GEMV's loads: 16 bytes.
const WORDS: usize = 4;

/// A block-quantized `[out, in]` matrix on a cubecl device, in its checkpoint layout: the
/// blocks' values as 32-bit words and one f16 scale per block, uploaded as they are stored
/// (no conversion on the host, a quarter or an eighth of f32's memory plus the scales).
///
/// Decode (at most [`GEMV_MAX_ROWS`] activation rows) runs a GEMV that dequantizes as it
/// multiplies, reading only the quantized bytes. A prefill dequantizes the matrix to f32 on
/// the device, runs the GEMM, and frees it again; an embedding lookup dequantizes the rows
/// it reads. Products are f32, against the exact dequantized values.
pub struct CubeQuantWeight<R: CubeRuntime, F, I, BT> {
    /// `[out, in × bits / 32]` u32.
    values: CubeTensor<R>,
    /// `[out, in / 32]` f16.
    scales: CubeTensor<R>,
    shape: [usize; 2],
    format: BlockFormat,
    backend: PhantomData<(F, I, BT)>,
}

impl<R: CubeRuntime, F, I, BT> fmt::Debug for CubeQuantWeight<R, F, I, BT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CubeQuantWeight")
            .field("shape", &self.shape)
            .field("format", &self.format)
            .finish()
    }
}

impl<R, F, I, BT> CubeQuantWeight<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    /// Uploads a host matrix's values and scales to `device`, byte for byte.
    pub fn new(matrix: &QuantMatrix, device: &R::Device) -> Self {
        let client = R::client(device);
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let upload = |bytes: &[u8], shape: [usize; 2], dtype: DType| {
            let handle = client.create_from_slice(bytes);
            CubeTensor::new_contiguous(client.clone(), device.clone(), shape.into(), handle, dtype)
        };
        let words = cols * bits(matrix.format()) / 32;
        Self {
            values: upload(matrix.data(), [rows, words], DType::U32),
            scales: upload(matrix.scale_bytes(), [rows, cols / BLOCK], DType::F16),
            shape: [rows, cols],
            format: matrix.format(),
            backend: PhantomData,
        }
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// The whole matrix dequantized, `[out, in]` f32.
    fn dequantized(&self) -> CubeTensor<R> {
        let out = empty_f32(&self.values, self.shape);
        let [_, k] = self.shape;
        // SAFETY: one unit per value of `out` (the kernel checks the bound); `values` and
        // `scales` hold the `[out, k]` matrix's blocks.
        unsafe {
            quant_kernels::dequantize::launch_unchecked(
                &out.client,
                elementwise_count(self.shape[0] * k),
                CubeDim::new_1d(ELEMENTWISE_UNITS),
                self.values.clone().into_array_arg(),
                self.scales.clone().into_array_arg(),
                out.clone().into_array_arg(),
                k,
                bits(self.format),
            );
        }
        out
    }

    /// `x @ w.T` by the dequantizing GEMV: `x` `[rows, k]` f32.
    fn gemv(&self, x: CubeTensor<R>, rows: usize) -> CubeTensor<R> {
        let [out, k] = self.shape;
        let y = empty_f32(&x, [rows, out]);
        // SAFETY: cubes cover (feature, row) for every feature < out (the kernel drops the
        // rest) and row < rows; each reads row `feature`'s words (k × bits / 32, a multiple
        // of WORDS) and scales, and row `row` of `x`, and writes one element of `y`.
        unsafe {
            quant_kernels::gemv_quant::launch_unchecked(
                &x.client,
                feature_grid(out, rows),
                CubeDim::new_1d(UNITS as u32),
                WORDS,
                x.clone().into_array_arg(),
                self.values.clone().into_array_arg(),
                self.scales.clone().into_array_arg(),
                y.clone().into_array_arg(),
                k,
                out,
                UNITS,
                bits(self.format),
            );
        }
        y
    }
}

impl<R, F, I, BT> Weight<Cube<R, F, I, BT>> for CubeQuantWeight<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn shape(&self) -> [usize; 2] {
        self.shape
    }

    fn forward(&self, x: Tensor<Cube<R, F, I, BT>, 2>) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let dtype = x.dtype();
        let [rows, k] = x.dims();
        let [out, _] = self.shape;
        let x = f32_cube(x);
        let y = if rows <= GEMV_MAX_ROWS {
            self.gemv(x, rows)
        } else {
            gemm(x, self.dequantized(), rows, out, k)
        };
        Ok(tensor::<R, F, I, BT, 2>(y).cast(float_dtype(dtype)))
    }

    fn rows(
        &self,
        ids: &[u32],
        dtype: ComputeDtype,
        _device: &<Cube<R, F, I, BT> as burn::tensor::backend::BackendTypes>::Device,
    ) -> Result<Tensor<Cube<R, F, I, BT>, 2>> {
        let [vocab_size, k] = self.shape;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ModelError::InvalidToken { id, vocab_size });
        }
        let out = empty_f32(&self.values, [ids.len(), k]);
        let ids_arg = upload_u32(&out.client, ids);
        // SAFETY: one unit per value of `out` (the kernel checks the bound); every id is a
        // row of the matrix (checked above).
        unsafe {
            quant_kernels::dequantize_rows::launch_unchecked(
                &out.client,
                elementwise_count(ids.len() * k),
                CubeDim::new_1d(ELEMENTWISE_UNITS),
                self.values.clone().into_array_arg(),
                self.scales.clone().into_array_arg(),
                ids_arg,
                out.clone().into_array_arg(),
                k,
                bits(self.format),
            );
        }
        Ok(tensor::<R, F, I, BT, 2>(out).cast(dtype.float()))
    }
}

/// Bits per value of `format`: also the 32-bit words per block of 32 values.
fn bits(format: BlockFormat) -> usize {
    match format {
        BlockFormat::Q8_0 => 8,
        BlockFormat::Q4_0 => 4,
    }
}
