//! The CPU kernels on host memory, laid out by operation: `matmul` (bf16 weights × f32
//! activations, [`Bf16Matrix::matmul`](crate::matrix::Bf16Matrix::matmul)), `quant` (Q8_0 /
//! Q4_0 weights, [`QuantMatrix::matmul`](crate::matrix::QuantMatrix::matmul)), `attention`
//! (causal attention over the paged f32 KV cache), `simd` (SwiGLU's activation and the
//! vector helpers the others share). [`CpuKernels`](crate::cpu::CpuKernels) runs the
//! decoder on them.
//!
//! Each operation has one module per instruction set: [`Isa::Portable`] (any CPU, the
//! reference the others are tested against), [`Isa::Avx2`], [`Isa::Avx512`],
//! [`Isa::Avx512Vnni`] (8-bit dot products for the quantized matmul), [`Isa::Avx512Bf16`]
//! (bf16 dot products for the bf16 matmul) and [`Isa::Amx`] (x86-64); an instruction set
//! without a kernel of its own for some operation runs the next one below it. Every entry point takes the [`Isa`] to run; one
//! asked for that the CPU lacks runs on the best one it has, so a wrong choice is slow,
//! never unsound. [`Isa::selected`] picks the best the CPU has once per process, unless the
//! environment variable [`ISA_ENV`]
//! (`LLMJP_CPU_ISA=portable|avx2|avx512|avx512vnni|avx512bf16|amx`) asks for another.
//!
//! ```
//! use half::bf16;
//! use llmjp_model::cpu::Isa;
//! use llmjp_model::matrix::Bf16Matrix;
//!
//! // w = [[1, 2], [3, 4], [5, 6]]: 3 outputs, 2 inputs.
//! let w: Vec<bf16> = [1., 2., 3., 4., 5., 6.].map(bf16::from_f32).to_vec();
//! let w = Bf16Matrix::from_vec(w, 3, 2);
//! for isa in Isa::ALL.into_iter().filter(|isa| isa.is_supported()) {
//!     assert_eq!(w.matmul(isa, &[1.0, 10.0], 1), [21.0, 43.0, 65.0]); // x @ w.T
//! }
//! ```

pub(crate) mod attention;
pub(crate) mod isa;
mod kquant;
mod matmul;
mod quant;
pub(crate) mod simd;
mod tasks;

pub use isa::{Isa, ISA_ENV};
