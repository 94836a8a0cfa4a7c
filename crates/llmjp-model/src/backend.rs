//! The backends the models run on, and which [`DecoderOps`] each runs by default. Each
//! backend's ops live in its own module: [`crate::cpu`], `crate::cube`.

use std::sync::Arc;

/// burn's backend trait, which every model type is generic over.
pub use burn::tensor::backend::Backend;

pub use crate::cpu::Cpu;
use crate::cpu::CpuKernels;
use crate::ops::{DecoderOps, Reference};
use crate::{ComputeDtype, Result};

/// The CUDA backend (burn-cuda's `CubeBackend` on the CUDA runtime, without burn's fusion),
/// with the `cuda` feature.
#[cfg(feature = "cuda")]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// The Vulkan backend (burn-wgpu's `CubeBackend` on its SPIR-V path, without burn's
/// fusion), with the `vulkan` feature: the CUDA kernels on any Vulkan device, Mesa's
/// lavapipe included (f32 and f16 there; no bf16).
#[cfg(feature = "vulkan")]
#[cfg_attr(docsrs, doc(cfg(feature = "vulkan")))]
pub type Vulkan = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// A backend the models know: the [`DecoderOps`] a model loaded on it runs unless told
/// otherwise ([`CausalLm::load_with_ops`](crate::CausalLm::load_with_ops) takes any, on any
/// backend). The extension point of burn's own custom-kernel example, implemented per
/// backend.
pub trait DecoderBackend: Backend {
    /// The ops for weights of `dtype`.
    fn default_ops(dtype: ComputeDtype) -> Result<Arc<dyn DecoderOps<Self>>>;
}

/// bf16 runs on the CPU kernels (bf16 weights in place, f32 activations); f32 and f16 on
/// the reference (burn-flex's own ops), as transformers computes them.
impl DecoderBackend for Cpu {
    fn default_ops(dtype: ComputeDtype) -> Result<Arc<dyn DecoderOps<Self>>> {
        Ok(match dtype {
            ComputeDtype::BF16 => Arc::new(CpuKernels::new()?),
            ComputeDtype::F32 | ComputeDtype::F16 => Arc::new(Reference),
        })
    }
}

/// The cubecl kernels ([`CubeKernels`](crate::cube::CubeKernels)) for every dtype.
#[cfg(feature = "cuda")]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
impl DecoderBackend for Cuda {
    fn default_ops(_dtype: ComputeDtype) -> Result<Arc<dyn DecoderOps<Self>>> {
        Ok(Arc::new(crate::cube::CubeKernels))
    }
}

/// The cubecl kernels ([`CubeKernels`](crate::cube::CubeKernels)) for every dtype.
#[cfg(feature = "vulkan")]
#[cfg_attr(docsrs, doc(cfg(feature = "vulkan")))]
impl DecoderBackend for Vulkan {
    fn default_ops(_dtype: ComputeDtype) -> Result<Arc<dyn DecoderOps<Self>>> {
        Ok(Arc::new(crate::cube::CubeKernels))
    }
}

/// Whether a CUDA driver can be loaded. Creating a CUDA device succeeds without one, but the
/// first tensor operation then panics inside a device thread: probe before using it.
pub fn cuda_available() -> bool {
    #[cfg(all(feature = "cuda", unix))]
    {
        // SAFETY: dlopen with a constant, NUL-terminated name; the handle is closed again.
        unsafe {
            let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
            true
        }
    }
    #[cfg(not(all(feature = "cuda", unix)))]
    {
        false
    }
}
