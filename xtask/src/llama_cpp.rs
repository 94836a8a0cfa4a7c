//! llama.cpp as a benchmark column: the bench checkpoint converted by llama.cpp's own
//! converter (`convert_hf_to_gguf.py`, then `llama-quantize`) and measured by `llama-bench`
//! with the threads our kernels use. How to build llama.cpp here: docs/performance.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::bench_model::MODEL_DIR;
use crate::shell::{output, root, run};

pub struct LlamaCpp {
    bench: PathBuf,
    pub gguf: PathBuf,
    /// llama.cpp's name of the format.
    pub format: &'static str,
    pub threads: usize,
    /// ik_llama.cpp: weights repacked at load (`-rtr 1`), decode measured with `-gp`
    /// (its llama-bench has no `-d`).
    ik: bool,
}

impl LlamaCpp {
    /// Converts the bench checkpoint to GGUF in the format of `dtype` unless done already.
    pub fn prepare(src: &str, dtype: &str) -> Result<Self, String> {
        let src = PathBuf::from(src);
        let bin = src.join("build/bin");
        let format = match dtype {
            "bf16" => "BF16",
            "q8_0" => "Q8_0",
            "q4_0" => "Q4_0",
            "q4_k_m" => "Q4_K_M",
            "q5_k_m" => "Q5_K_M",
            "q6_k" => "Q6_K",
            other => return Err(format!("no llama.cpp format for --dtype {other}")),
        };
        let model = root().join(MODEL_DIR);
        let bf16 = root().join("target/bench-model-1.8b.bf16.gguf");
        if !bf16.is_file() {
            convert(&src, &model, &bf16)?;
        }
        let gguf = if format == "BF16" {
            bf16
        } else {
            let path = root().join(format!("target/bench-model-1.8b.{dtype}.gguf"));
            if !path.is_file() {
                let quantize = bin.join("llama-quantize");
                run(Command::new(quantize).arg(&bf16).arg(&path).arg(format))?;
            }
            path
        };
        Ok(Self {
            bench: bin.join("llama-bench"),
            gguf,
            format,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ik: false,
        })
    }

    /// ik_llama.cpp's llama-bench in the tree `src`, on the same GGUF file.
    pub fn with_ik(&self, src: &str) -> Self {
        Self {
            bench: PathBuf::from(src).join("build/bin/llama-bench"),
            gguf: self.gguf.clone(),
            format: self.format,
            threads: self.threads,
            ik: true,
        }
    }

    /// Prefill of `prompt` tokens, and decode of `gen` tokens after them, in tok/s.
    pub fn bench(&self, prompt: &str, gen: &str) -> Result<Value, String> {
        let threads = self.threads.to_string();
        let measure = |args: &[&str]| -> Result<f64, String> {
            let mut command = Command::new(&self.bench);
            command
                .arg("-m")
                .arg(&self.gguf)
                .args(["-t", &threads, "-r", "1", "-o", "json"])
                .args(args);
            let text = output(&mut command)?;
            let runs: Value =
                serde_json::from_str(&text).map_err(|e| format!("llama-bench: {e}"))?;
            runs[0]["avg_ts"]
                .as_f64()
                .ok_or_else(|| format!("llama-bench printed no avg_ts: {text}"))
        };
        if self.ik {
            let prefill = measure(&["-rtr", "1", "-p", prompt, "-n", "0"])?;
            let decode = measure(&[
                "-rtr",
                "1",
                "-p",
                "0",
                "-n",
                "0",
                "-gp",
                &format!("{prompt},{gen}"),
            ])?;
            return Ok(json!({"prefill_tok_s": prefill, "decode_tok_s": decode}));
        }
        let prefill = measure(&["-p", prompt, "-n", "0"])?;
        let decode = measure(&["-p", "0", "-n", gen, "-d", prompt])?;
        Ok(json!({"prefill_tok_s": prefill, "decode_tok_s": decode}))
    }
}

/// The checkpoint as a bf16 GGUF, through llama.cpp's converter. Its tokenizer conversion
/// wants a sentencepiece `tokenizer.model`, which `xtask/bench/make_spm.py` builds from
/// tokenizer.json; the converter runs on a folder of links plus that file.
fn convert(src: &Path, model: &Path, out: &Path) -> Result<(), String> {
    let folder = root().join("target/bench-model-1.8b.llama-cpp-src");
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(model).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let link = folder.join(path.file_name().unwrap_or_default());
        if !link.exists() {
            std::os::unix::fs::symlink(&path, &link).map_err(|e| e.to_string())?;
        }
    }
    run(Command::new("python3")
        .arg("xtask/bench/make_spm.py")
        .arg(model)
        .arg(folder.join("tokenizer.model")))?;
    run(Command::new("python3")
        .env("PYTHONPATH", src.join("gguf-py"))
        .arg(src.join("convert_hf_to_gguf.py"))
        .arg(&folder)
        .args(["--outtype", "bf16", "--outfile"])
        .arg(out))
}
