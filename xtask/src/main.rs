//! Project automation (never needed by CI):
//!
//! - `cargo xtask golden`: regenerates the reference data the tests compare against
//!   (Python with `transformers` and `torch`).
//! - `cargo xtask bench [--rounds N] [--prompt-tokens N] [--gen-tokens N] [--dtype D]
//!   [--baseline BIN]`:
//!   `llmjp bench` against the same measurement in transformers (bf16) on a random-weight
//!   checkpoint with the real llm-jp-3.1-1.8b config, alternating, with the ratios; with
//!   `--baseline`, another build's `llmjp` binary runs in the same rounds (before/after);
//!   with `--llama-cpp SRC` (a built llama.cpp tree), llama.cpp's `llama-bench` on the same
//!   checkpoint converted with its own converter to the same format (bf16, Q8_0, Q4_0);
//!   with `--compare-dtype D`, ours in another dtype in the same rounds (q8_0 vs bf16).
//! - `cargo xtask bench-serve [--gen-tokens N] [--concurrency 1,4,8,16] [--dtype D]`:
//!   `llmjp serve` on the same checkpoint under concurrent streaming clients: aggregate
//!   decode tok/s, time to first token and inter-token latency (p50/p99), and time to first
//!   token with and without the prefix cache.
//! - `cargo xtask accuracy [--model DIR] [--positions N]`: Q8_0 and Q4_0 (quantized on
//!   load) against bf16 on the same checkpoint: logit errors and top-1 agreement.
//! - `cargo xtask gpu-check`: builds the CUDA CLI and kernel tests, stripped and
//!   compressed, with the tokenizer, into `target/gpu-check/` for `xtask/gpu/check.sh` on a
//!   GPU machine (docs/cuda.md).

mod accuracy;
mod bench;
mod bench_model;
mod gpu_check;
mod llama_cpp;
mod serve_bench;
mod shell;

use std::process::{Command, ExitCode};

use shell::run;

const GOLDEN_SCRIPTS: [&str; 5] = [
    "xtask/golden/tokenizer_golden.py",
    "xtask/golden/chat_golden.py",
    "xtask/golden/sampler_golden.py",
    "xtask/golden/model_golden.py",
    "xtask/golden/kquant_golden.py",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("golden") => GOLDEN_SCRIPTS.iter().try_for_each(|s| run(Command::new("python3").arg(s))),
        Some("bench") => bench::run(&args[1..]),
        Some("bench-serve") => serve_bench::run(&args[1..]),
        Some("accuracy") => accuracy::run(&args[1..]),
        Some("gpu-check") => gpu_check::run_check(&args[1..]),
        _ => Err("usage: cargo xtask golden | cargo xtask bench [--rounds N] [--prompt-tokens N] [--gen-tokens N] [--dtype bf16|f32] [--baseline BIN] [--llama-cpp SRC] [--compare-dtype D] | cargo xtask bench-serve [--gen-tokens N] [--concurrency 1,4,8,16] [--dtype D] | cargo xtask accuracy [--model DIR] [--positions N] | cargo xtask gpu-check".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
