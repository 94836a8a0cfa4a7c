//! Kernels of our own on burn's cubecl backends (CUDA with the `cuda` feature, Vulkan with
//! `vulkan`): [`CubeKernels`], the op layer written once in cubecl (`#[cube]`), and the
//! persistent caches of compiled kernels and autotune results ([`kernel_cache`]).

pub mod kernel_cache;
pub mod kernels;
mod launch;
mod ops;
mod quant;
pub mod quant_kernels;

pub use launch::GEMV_MAX_ROWS;
pub use ops::{CubeKernels, ATTENTION_MAX_LEN};
pub use quant::CubeQuantWeight;
