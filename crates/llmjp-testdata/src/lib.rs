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

pub mod gguf;
pub mod http;
#[cfg(unix)]
pub mod limits;

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

/// A reproducible stream of values in `[-0.5, 0.5)` (a 64-bit LCG).
pub fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
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

/// How closely logits agree with reference logits, over positions of `vocab` logits each:
/// the measure of a quantized model against its bf16 original.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitAgreement {
    /// Positions compared.
    pub positions: usize,
    /// Largest absolute difference of a logit.
    pub max_abs: f32,
    /// RMS of the differences over the RMS of the reference logits.
    pub rel_rms: f64,
    /// Positions whose reference top-2 margin is clear (see [`CLEAR_MARGIN`]).
    pub clear: usize,
    /// Clear positions where both pick the same top-1 token.
    pub clear_agree: usize,
}

/// A position's top-1 is *clear* when the reference's top-2 margin is at least this many
/// standard deviations of that position's reference logits. Random-weight models have many
/// near-ties, where any perturbation may swap the top two; at this margin a swap needs an
/// error far beyond a good quantization's.
pub const CLEAR_MARGIN: f64 = 0.1;

impl LogitAgreement {
    /// Compares `ours` with `reference` (both `[positions, vocab]`, row-major).
    pub fn new(reference: &[f32], ours: &[f32], vocab: usize) -> Self {
        assert_eq!(reference.len(), ours.len());
        let (mut err2, mut ref2) = (0f64, 0f64);
        let (mut clear, mut clear_agree) = (0, 0);
        for (r, o) in reference.chunks_exact(vocab).zip(ours.chunks_exact(vocab)) {
            for (a, b) in r.iter().zip(o) {
                err2 += ((a - b) as f64).powi(2);
                ref2 += (*a as f64).powi(2);
            }
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / vocab as f64;
            let std =
                (r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / vocab as f64).sqrt();
            let top = argmax(r) as usize;
            let second = r
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != top)
                .map(|(_, &v)| v)
                .fold(f32::NEG_INFINITY, f32::max);
            if (r[top] - second) as f64 >= CLEAR_MARGIN * std {
                clear += 1;
                clear_agree += usize::from(argmax(o) as usize == top);
            }
        }
        Self {
            positions: reference.len() / vocab,
            max_abs: max_abs_diff(reference, ours),
            rel_rms: (err2 / ref2.max(f64::MIN_POSITIVE)).sqrt(),
            clear,
            clear_agree,
        }
    }

    /// The share of clear positions whose top-1 agrees (1 when none is clear).
    pub fn clear_top1(&self) -> f64 {
        if self.clear == 0 {
            1.0
        } else {
            self.clear_agree as f64 / self.clear as f64
        }
    }
}
