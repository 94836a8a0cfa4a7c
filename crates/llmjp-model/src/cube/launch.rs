//! What every cubecl launch here shares: cube sizes and grids, the GEMM launch, and moving
//! tensors between burn and cubecl.

use burn::tensor::{DType, FloatDType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::kernels;

/// burn's cubecl backend over runtime `R`.
pub(crate) type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// Units per cube of the reducing kernels (a power of two).
pub(crate) const UNITS: usize = 128;
/// Units per cube of the element-wise kernels.
pub(crate) const ELEMENTWISE_UNITS: u32 = 256;
/// Activation rows up to which a linear layer runs the GEMV kernel (each weight read once
/// per row); more rows (a prefill) run the tiled GEMM kernel.
pub const GEMV_MAX_ROWS: usize = 8;
/// Cubes along one grid axis (Vulkan guarantees 65,535).
const GRID_AXIS: usize = 32_768;

/// `x @ w.T` by the tiled GEMM kernel: `x` `[rows, k]` f32, `w` `[out, k]` contiguous.
pub(crate) fn gemm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    rows: usize,
    out: usize,
    k: usize,
) -> CubeTensor<R> {
    let y = empty_f32(&x, [rows, out]);
    let dtype = w.dtype;
    let count = CubeCount::Static(
        out.div_ceil(kernels::GEMM_FEATURES) as u32,
        rows.div_ceil(kernels::GEMM_ROWS) as u32,
        1,
    );
    // SAFETY: the tiles cover [rows, out]; the kernel bounds every read of `x` ([rows, k])
    // and `w` ([out, k]) and every write of `y` ([rows, out]).
    unsafe {
        kernels::gemm::launch_unchecked(
            &x.client,
            count,
            CubeDim::new_2d(16, 16),
            x.clone().into_array_arg(),
            w.into_array_arg(),
            y.clone().into_array_arg(),
            rows,
            k,
            out,
            dtype.into(),
        );
    }
    y
}

/// Cubes for one output feature each of `rows` rows: `(gx, gy, rows)`, `gx * gy >= out`
/// within the grid's axis limits (the kernels drop features past `out`).
pub(crate) fn feature_grid(out: usize, rows: usize) -> CubeCount {
    let gx = out.clamp(1, GRID_AXIS);
    CubeCount::Static(gx as u32, out.div_ceil(gx) as u32, rows as u32)
}

/// A float tensor as a contiguous f32 cube tensor.
pub(crate) fn f32_cube<R, F, I, BT, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    into_contiguous(t.cast(FloatDType::F32).into_primitive().tensor())
}

/// A cube tensor back as a burn tensor.
pub(crate) fn tensor<R, F, I, BT, const D: usize>(t: CubeTensor<R>) -> Tensor<Cube<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// An uninitialised f32 tensor of `shape` on `like`'s device.
pub(crate) fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: [usize; 2]) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        DType::F32,
    )
}

/// `values` on the device, as a kernel's array argument.
pub(crate) fn upload_u32<R: CubeRuntime>(client: &ComputeClient<R>, values: &[u32]) -> ArrayArg<R> {
    let handle = client.create_from_slice(u32::as_bytes(values));
    // SAFETY: the handle holds exactly `values.len()` u32s.
    unsafe { ArrayArg::from_raw_parts(handle, values.len()) }
}

/// Cubes of [`ELEMENTWISE_UNITS`] covering `elements`, within the grid's axis limits.
pub(crate) fn elementwise_count(elements: usize) -> CubeCount {
    let cubes = elements.div_ceil(ELEMENTWISE_UNITS as usize).max(1);
    let gx = cubes.min(GRID_AXIS);
    CubeCount::Static(gx as u32, cubes.div_ceil(gx) as u32, 1)
}
