//! Run the llm-jp-3.1 models in Rust: what a Python user does with transformers — load from
//! the Hub, apply the chat template, `generate(do_sample=True, top_p=0.95, temperature=0.7,
//! repetition_penalty=1.05)`, decode — in one call.
//!
//! ```no_run
//! use llmjp::{Device, GenerateOptions, Llm, LoadOptions, Message, ModelSource};
//!
//! # fn main() -> Result<(), llmjp::LlmError> {
//! let source: ModelSource = "llm-jp/llm-jp-3.1-1.8b-instruct4".parse()?;
//! let llm = Llm::load(&source, Device::auto(), &LoadOptions::default(), &mut |_, _| {})?;
//! let messages = [
//!     Message::system("以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"),
//!     Message::user("自然言語処理とは何か"),
//! ];
//! let options = GenerateOptions::default(); // the model card's sampling, 100 new tokens
//! let answer = llm.chat(&messages, &options, &mut |text| {
//!     print!("{text}");
//!     true // keep going
//! })?;
//! println!("\n[{} tokens, {:.1} tok/s]", answer.generated_ids.len(), answer.timings.decode_tok_s());
//! # Ok(())
//! # }
//! ```
//!
//! The same, runnable here on a tiny test model with the real tokenizer:
//!
//! ```
//! use llmjp::{GenerateOptions, LoadOptions, Message, ModelSource, Pipeline, SamplingParams};
//! use llmjp::backend::Cpu;
//!
//! # fn main() -> Result<(), llmjp::LlmError> {
//! # let Some(tokenizer_dir) = llmjp_testdata::tokenizer_dir() else { return Ok(()) };
//! let options = LoadOptions { tokenizer_dir: Some(tokenizer_dir), ..LoadOptions::default() };
//! let model = llmjp_testdata::fixture_dir("tiny-llmjp");
//! let pipeline = Pipeline::<Cpu>::load(&ModelSource::Dir(model), &options, &Default::default(), &mut |_, _| {})?;
//! let generate = GenerateOptions { max_new_tokens: 8, sampling: SamplingParams::greedy(), ..GenerateOptions::default() };
//! let out = pipeline.chat(&[Message::user("こんにちは")], &generate, &mut |_| true)?;
//! assert_eq!(out.generated_ids.len(), 8);
//! assert_eq!(out.text, pipeline.tokenizer().decode(&out.generated_ids, true)?);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `cuda`: `Device::Cuda(n)` and `Llm::Cuda`, through burn-cuda. It compiles without a
//!   CUDA toolkit (docs.rs builds it); running needs a driver and NVRTC. Off by default.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod decoding;
mod device;
mod error;
mod llm;
mod pipeline;
mod stop;

pub use decoding::{Decoding, FinishReason, Step, TokenBudget};
pub use device::Device;
pub use error::{LlmError, Result};
pub use llm::{Llm, PipelineTask};
pub use pipeline::{
    check_prompt_text, GenerateOptions, Generation, LoadOptions, Pipeline, Timings,
};
pub use stop::StopMatcher;

pub use llmjp_chat::{ChatTemplate, Message};
pub use llmjp_model::{backend, CausalLm, ComputeDtype, WeightDtype};
pub use llmjp_sampler::processors::LogitsProcessor;
pub use llmjp_sampler::{Sampler, SamplingParams};
pub use llmjp_tokenizer::Tokenizer;
pub use llmjp_weights::{HubOptions, ModelSource};

/// The crates the facade is made of, for what it does not re-export.
pub mod crates {
    pub use {llmjp_chat as chat, llmjp_model as model, llmjp_sampler as sampler};
    pub use {llmjp_tokenizer as tokenizer, llmjp_weights as weights};
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
