//! The benchmarks' model: a random-weight checkpoint with the real llm-jp-3.1-1.8b
//! config, made once with transformers.

use std::process::Command;

use crate::shell::{root, run as run_command};

/// The random-weight checkpoint with the real llm-jp-3.1-1.8b config.
pub const MODEL_DIR: &str = "target/bench-model-1.8b";
/// Installs transformers if needed and creates the checkpoint if it is not there.
pub fn ensure_checkpoint() -> Result<(), String> {
    let model = root().join(MODEL_DIR);
    let python_ok = Command::new("python3")
        .args(["-c", "import torch, transformers, safetensors"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        eprintln!("installing transformers, torch and safetensors with pip");
        run_command(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "transformers",
            "torch",
            "safetensors",
        ]))?;
    }
    if !model.join("config.json").is_file() {
        eprintln!("creating the 1.8b-shaped checkpoint in {MODEL_DIR}");
        run_command(Command::new("python3").args(["xtask/bench/make_checkpoint.py", MODEL_DIR]))?;
    }
    Ok(())
}
