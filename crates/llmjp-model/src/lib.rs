//! The llm-jp models on burn: Llama (llm-jp-3.1 1.8b, 13b) and Mixtral (8x13b) decoders,
//! written once over an op layer that each backend implements.
//!
//! - [`CausalLm`] loads a Hugging Face checkpoint folder (see `llmjp-weights`) and runs
//!   prefill and decode steps for one or more sequences, each against its own preallocated
//!   [`KvCache`], returning f32 logits that match transformers'.
//! - [`ops`]: the operations the decoder calls ([`ops::DecoderOps`]), each defaulting to
//!   the [`Reference`](ops::Reference) on burn tensor ops for every backend.
//!   [`backend::DecoderBackend`] says which ops a backend runs by default: on the CPU,
//!   [`ComputeDtype::BF16`] runs the CPU kernels (bf16 weights in place from the mapped
//!   files, f32 activations, AMX / AVX-512 / AVX2), f32 and f16 the reference.
//! - One module per backend: [`cpu`] ([`CpuKernels`](cpu::CpuKernels), its weights, KV
//!   cache and kernels, the instruction set chosen once, `LLMJP_CPU_ISA`) and `cube` (the
//!   cubecl kernels of CUDA and Vulkan).
//! - [`linear`]: weights behind one interface ([`linear::Weight`]): dense tensors, bf16 in
//!   place, Q8_0 / Q4_0 blocks (quantized on load with [`WeightDtype`], or stored so), read
//!   from host [`matrix`] storage.
//! - [`params`]: the parameters the ops take (RMSNorm, RoPE tables, MLP weights).
//! - [`quantize`]: writes a quantized checkpoint that loads in place.
//! - `models/`: one file per architecture, over the shared decoder layer.
//!
//! ```
//! use llmjp_model::{backend::Cpu, CausalLm, ComputeDtype, Sequence};
//!
//! # fn main() -> Result<(), llmjp_model::ModelError> {
//! let dir = llmjp_testdata::fixture_dir("llama-mha-bf16");
//! let device = Default::default();
//! let model = CausalLm::<Cpu>::from_dir(&dir, ComputeDtype::F32, &device)?;
//!
//! let mut cache = model.new_cache(64);
//! let prompt = [1, 17, 42, 99];
//! let logits = model.forward_last(&prompt, &mut cache)?; // prefill
//! let next = logits.argmax(0).into_scalar() as u32;
//! let logits = model.forward_last(&[next], &mut cache)?; // one decode step
//! assert_eq!(cache.len(), 5);
//! assert_eq!(logits.dims(), [model.config().vocab_size]);
//!
//! // Two sequences of different lengths and positions in one pass.
//! let mut other = model.new_cache(64);
//! let logits = model.forward_batch(&mut [
//!     Sequence { ids: &[7], cache: &mut cache },
//!     Sequence { ids: &[1, 5, 9], cache: &mut other },
//! ])?;
//! assert_eq!(logits.dims(), [2, model.config().vocab_size]);
//! assert_eq!((cache.len(), other.len()), (6, 3));
//! let values: Vec<f32> = llmjp_model::read_f32(logits)?;
//! assert!(values.iter().all(|v| v.is_finite()));
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `cuda`: the burn-cuda backend, `backend::Cuda`, running the cubecl kernels of the
//!   `cube` module, with persistent kernel caches. It compiles without a CUDA toolkit (docs.rs
//!   builds it); running needs a driver and NVRTC. Off by default.
//! - `vulkan`: the same kernels on any Vulkan device, `backend::Vulkan` (burn-wgpu's SPIR-V
//!   path): Mesa's lavapipe runs them on a CPU, where CI tests them. Off by default.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod cache;
pub mod cpu;
#[cfg(feature = "cube")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "cuda", feature = "vulkan"))))]
pub mod cube;
mod dtype;
mod error;
mod kv_memory;
mod layers;
pub mod linear;
pub mod matrix;
mod model;
mod models;
mod numerics;
pub mod ops;
pub mod params;
pub mod quantize;
#[cfg(test)]
mod testing;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use cache::KvCache;
pub use dtype::{ComputeDtype, WeightDtype};
pub use error::{ModelError, Result};
pub use kv_memory::KvMemory;
pub use llmjp_weights::{Architecture, ModelConfig};
pub use model::{CausalLm, Sequence};

/// A tensor's values read back to the host as f32 (converted from its dtype): the one
/// read-back the generation loop and the tests use.
pub fn read_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Readback(format!("{e:?}")))
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
