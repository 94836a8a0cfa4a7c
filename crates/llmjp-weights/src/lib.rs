//! Hugging Face checkpoints for the llm-jp models, without a tensor library.
//!
//! - [`ModelConfig`] / [`GenerationConfig`]: `config.json` (Hub style with `rope_theta` and
//!   `torch_dtype`, or transformers 5 style with `rope_parameters` and `dtype`) and
//!   `generation_config.json`, checked for what the models support.
//! - [`Checkpoint`]: `model.safetensors` or a sharded `model.safetensors.index.json`,
//!   memory-mapped, headers validated on open; [`Checkpoint::read`] checks a tensor's shape
//!   and converts it from bf16 / f16 / f32 to the element type asked for, optionally
//!   transposed, then releases the mapped pages so that loading holds little more than the
//!   converted weights; [`Checkpoint::view`] hands out a tensor as stored (any dtype, for
//!   zero-copy use) and leaves it to the caller to refuse what it cannot run.
//! - [`gguf`]: llama.cpp's GGUF files: metadata and tensor directory, bounds-checked.
//! - [`quant`]: llama.cpp's Q8_0 and Q4_0 block formats, quantized and dequantized.
//! - [`atomic`]: every file written new and renamed into place; outputs that share a file
//!   with their input refused.
//! - [`resolve_model`]: a local folder, or `org/name[@revision]` fetched into the standard
//!   HF cache (`HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_HUB_OFFLINE`).
//!
//! Every failure is a [`WeightsError`] naming the file or tensor.
//!
//! ```
//! use llmjp_weights::{Checkpoint, Layout, ModelConfig, WeightsError};
//! # fn main() -> Result<(), WeightsError> {
//! # let dir = std::env::temp_dir().join(format!("llmjp-weights-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # std::fs::write(dir.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"],
//! #   "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
//! #   "num_attention_heads": 2, "rope_theta": 10000, "torch_dtype": "bfloat16"}"#).unwrap();
//! # let header = br#"{"lm_head.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;
//! # let mut file = (header.len() as u64).to_le_bytes().to_vec();
//! # file.extend_from_slice(header);
//! # for x in [1f32, 2., 3., 4., 5., 6.] { file.extend_from_slice(&x.to_le_bytes()); }
//! # std::fs::write(dir.join("model.safetensors"), file).unwrap();
//! let config = ModelConfig::from_file(&dir.join("config.json"))?;
//! assert_eq!(config.head_dim, 2);
//! assert_eq!(config.num_key_value_heads, 2); // no GQA unless the config says so
//!
//! let checkpoint = Checkpoint::open(&dir)?;
//! let w: Vec<f32> = checkpoint.read("lm_head.weight", &[2, 3], Layout::Transposed)?;
//! assert_eq!(w, [1., 4., 2., 5., 3., 6.]);
//!
//! // A wrong shape is an error that names the tensor.
//! let err = checkpoint.read::<f32>("lm_head.weight", &[3, 2], Layout::AsStored).unwrap_err();
//! assert!(matches!(err, WeightsError::ShapeMismatch { .. }));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod atomic;
mod checkpoint;
mod config;
mod error;
pub mod gguf;
mod hub;
pub mod kquant;
pub mod quant;
pub mod sigbus;
mod source;
pub mod writer;

use std::path::Path;

pub use checkpoint::{Checkpoint, Dtype, Element, Layout, TensorMeta, TensorView};
pub use config::{Architecture, GenerationConfig, ModelConfig, MAX_POSITIONS, QUANT_METHOD};
pub use error::{Result, WeightsError};
pub use half::{bf16, f16};
pub use hub::{fetch_model, HubId, HubOptions};
pub use source::{resolve_model, resolve_tokenizer, ModelSource};

/// Largest JSON file read from a model folder (`config.json`, `generation_config.json`,
/// `model.safetensors.index.json`; real ones are a few kilobytes to a few megabytes).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads and parses a JSON file of at most 64 MiB (`config.json` and its kin).
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_file(path, MAX_JSON_BYTES)?;
    serde_json::from_str(&text).map_err(|source| WeightsError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether anything (file, folder, FIFO, …) is at `path`, following symbolic links.
fn exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Checks that `path` is a regular file (not a folder, FIFO or device, which would fail
/// oddly or block) and returns its size.
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let metadata = std::fs::metadata(path).map_err(|source| WeightsError::io(path, source))?;
    if metadata.is_file() {
        Ok(metadata.len())
    } else {
        Err(WeightsError::NotAFile {
            path: path.to_path_buf(),
        })
    }
}

/// Reads a regular UTF-8 text file of at most `limit` bytes: the type and size are checked
/// before it is opened (a FIFO is an error, not a hang), and the read stops at the limit.
pub fn read_file(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let too_large = || WeightsError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    if regular_file_len(path)? > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|source| WeightsError::io(path, source))?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| WeightsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"),
    })
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
