//! The llm-jp models on burn: Llama (llm-jp-3.1 1.8b, 13b) and Mixtral (8x13b) decoders,
//! generic over burn's `Backend`.
//!
//! [`CausalLm`] loads a Hugging Face checkpoint folder (see `llmjp-weights`) into tensors of
//! the chosen [`ComputeDtype`] and runs prefill and single-token decode steps against a
//! preallocated [`KvCache`], returning f32 logits that match transformers'.
//!
//! On the CPU, [`ComputeDtype::BF16`] takes a faster path: bf16 weights are used in place
//! from the memory-mapped files and run by the AVX-512 / AMX kernels of [`cpu_bf16`] on f32
//! activations, with the cache and attention on the host.
//!
//! ```
//! use llmjp_model::{backend::Cpu, CausalLm, ComputeDtype};
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
//! # Ok(())
//! # }
//! ```

mod attention;
pub mod backend;
pub mod cpu_bf16;
mod dtype;
mod error;
mod layers;
mod llama;
mod mixtral;
mod model;
#[cfg(test)]
mod testing;

pub use dtype::ComputeDtype;
pub use error::{ModelError, Result};
pub use llmjp_weights::{Architecture, ModelConfig};
pub use model::{CausalLm, KvCache};
