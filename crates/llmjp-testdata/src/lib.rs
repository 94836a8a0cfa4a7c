//! Locates the test data shared by the workspace's tests.
//!
//! The real llm-jp-3 tokenizer is not copied into the repository: tests find it through the
//! `LLMJP_TOKENIZER_DIR` environment variable (which `.ci/run` sets), falling back to
//! `../shared/llm-jp-3-tokenizer` beside the workspace. When it cannot be found, a test skips
//! with a message, except under CI (`CI` set), where a missing fixture is a failure.
//!
//! ```
//! if let Some(dir) = llmjp_testdata::tokenizer_dir() {
//!     assert!(dir.join("tokenizer.json").is_file());
//! }
//! ```

pub mod http;

use std::path::{Path, PathBuf};

/// Environment variable naming the folder of the real llm-jp-3 tokenizer.
pub const TOKENIZER_DIR_VAR: &str = "LLMJP_TOKENIZER_DIR";

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Environment variable naming the folder of the real llm-jp-3.1 `config.json` files.
pub const CONFIGS_DIR_VAR: &str = "LLMJP_CONFIGS_DIR";

/// The folder of the real llm-jp-3.1 configs (`llm-jp-3.1-1.8b.config.json`, …), or `None`
/// (with a message) when absent. Panics under CI.
pub fn configs_dir() -> Option<PathBuf> {
    shared_dir(
        CONFIGS_DIR_VAR,
        "llm-jp-3-configs",
        "llm-jp-3.1-1.8b.config.json",
    )
}

/// The tiny checkpoints made by `xtask/golden/model_golden.py`, committed with the repo.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The folder of the real llm-jp-3 tokenizer, or `None` (with a message on stderr) when it is
/// absent. Panics under CI, where the fixture must be present.
pub fn tokenizer_dir() -> Option<PathBuf> {
    shared_dir(TOKENIZER_DIR_VAR, "llm-jp-3-tokenizer", "tokenizer.json")
}

fn shared_dir(var: &str, default: &str, probe: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os(var) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared").join(default),
    };
    if dir.join(probe).is_file() {
        return Some(dir);
    }
    let message = format!(
        "{probe} was not found in {}: set {var} to the folder holding it (../shared/{default})",
        dir.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipping: {message}");
    None
}

/// What transformers computed on a tiny fixture (`reference.json`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ModelReference {
    pub prompts: Vec<ReferencePrompt>,
}

/// One prompt of a [`ModelReference`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReferencePrompt {
    pub ids: Vec<u32>,
    /// transformers' f32 logits at the last prompt position.
    pub last_logits: Vec<f32>,
    /// transformers' greedy continuation.
    pub greedy: Vec<u32>,
}

/// The tiny Llama and Mixtral fixtures with transformers references.
pub const MODEL_FIXTURES: [&str; 4] = [
    "llama-mha-bf16",
    "llama-gqa-f32-sharded",
    "mixtral-top2-bf16",
    "mixtral-top1-gqa-f16-t5",
];

/// The reference outputs of fixture `name`.
pub fn model_reference(name: &str) -> ModelReference {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Index of the largest value (the first on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best }) as u32
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
