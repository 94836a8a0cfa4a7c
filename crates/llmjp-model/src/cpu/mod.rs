//! The CPU backend: burn-flex tensors ([`Cpu`]) and the decoder's ops on them,
//! [`CpuKernels`]: bf16 weights used in place from the mapped checkpoint (or Q8_0 / Q4_0
//! blocks) multiplied on f32 activations by the AMX, AVX-512, AVX2 or portable kernels
//! (the instruction set is an [`Isa`]), attention over an f32 KV cache in shareable pages.
//!
//! - `ops.rs`: [`CpuKernels`], what the CPU runs of [`DecoderOps`](crate::ops::DecoderOps)
//!   (the rest is the reference);
//! - `weight.rs`: host matrices as the CPU backend's [`Weight`](crate::linear::Weight)s;
//! - `kv.rs`: the paged host KV cache (`HostKv`);
//! - `host.rs`: burn-flex tensors seen as host memory;
//! - `kernels/`: the kernels, by operation (`matmul`, `quant`, `attention`, `simd`), one
//!   file per instruction set in each; `isa.rs` chooses the instruction set.

mod host;
pub(crate) mod kernels;
mod kv;
mod ops;
mod weight;

pub use host::Cpu;
pub use kernels::{Isa, ISA_ENV};
pub use ops::CpuKernels;
