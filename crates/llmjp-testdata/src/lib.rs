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

use std::path::{Path, PathBuf};

/// Environment variable naming the folder of the real llm-jp-3 tokenizer.
pub const TOKENIZER_DIR_VAR: &str = "LLMJP_TOKENIZER_DIR";

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder of the real llm-jp-3 tokenizer, or `None` (with a message on stderr) when it is
/// absent. Panics under CI, where the fixture must be present.
pub fn tokenizer_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os(TOKENIZER_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/llm-jp-3-tokenizer"),
    };
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let message = format!(
        "the llm-jp-3 tokenizer was not found at {}: set {TOKENIZER_DIR_VAR} to the folder \
         holding tokenizer.json (../shared/llm-jp-3-tokenizer)",
        dir.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipping: {message}");
    None
}
