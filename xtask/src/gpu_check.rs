//! `cargo xtask gpu-check`: builds here everything the GPU machine needs (it has no cargo
//! and no network): the CUDA build of the CLI and of the cubecl kernel tests, stripped and
//! xz-compressed, with the tokenizer and configs, into `target/gpu-check/` (well under the
//! 64 MiB a device run carries). `xtask/gpu/check.sh` runs them there; docs/cuda.md says how.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::shell::{output, root, run};

/// The folder the device run carries.
pub const OUT: &str = "target/gpu-check";

pub fn run_check(_args: &[String]) -> Result<(), String> {
    let out = root().join(OUT);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("bin")).map_err(|e| e.to_string())?;

    eprintln!("building the CUDA CLI (release)…");
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "llmjp-cli",
        "--features",
        "cuda",
    ]))?;
    pack(&root().join("target/release/llmjp"), &out.join("bin/llmjp"))?;

    eprintln!("building the CUDA kernel tests (release)…");
    let json = output(Command::new("cargo").args([
        "test",
        "--release",
        "-p",
        "llmjp-model",
        "--features",
        "cuda",
        "--test",
        "cube",
        "--no-run",
        "--message-format=json",
    ]))?;
    let test = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "cube")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or("cargo did not report the cube test binary")?;
    pack(&test, &out.join("bin/cube-test"))?;

    // What the binaries find through paths compiled in (fixtures) or the shared folder.
    let shared = llmjp_testdata::workspace_root().join("../shared");
    for dir in ["llm-jp-3-tokenizer", "llm-jp-3-configs"] {
        copy_dir(&shared.join(dir), &out.join("shared").join(dir))?;
    }
    let built_at = root().canonicalize().map_err(|e| e.to_string())?;
    std::fs::write(out.join("build-root"), built_at.display().to_string())
        .map_err(|e| e.to_string())?;

    let size: u64 = walk(&out)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{OUT}: {:.1} MB. On the GPU machine (device tool): carry [\"{OUT}\"], run `bash xtask/gpu/check.sh`",
        size as f64 / 1e6
    );
    Ok(())
}

/// Strips `from` into `to` and compresses it (`to.xz`).
fn pack(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map_err(|e| format!("{}: {e}", from.display()))?;
    run(Command::new("strip").arg(to))?;
    run(Command::new("xz").args(["-6", "-T2", "-f"]).arg(to))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap_or_default()))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
