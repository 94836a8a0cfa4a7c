//! `cargo xtask bench`: our `llmjp bench` and transformers side by side.

use std::process::Command;

use serde_json::Value;

use crate::bench_model::{ensure_checkpoint, MODEL_DIR};
use crate::shell::{output, root, run as run_command};

const METRICS: [&str; 4] = ["load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"];

struct Options {
    rounds: usize,
    prompt_tokens: String,
    gen_tokens: String,
    dtype: String,
    /// Another build's `llmjp` binary, measured in the same rounds (before/after).
    baseline: Option<String>,
    /// A llama.cpp source tree with `build/bin/llama-bench`: a llama.cpp column.
    llama_cpp: Option<String>,
    /// An ik_llama.cpp tree with `build/bin/llama-bench`: a column run with `-rtr 1` on
    /// the GGUF files llama.cpp made.
    ik_llama_cpp: Option<String>,
    /// No transformers column (machines without torch).
    no_transformers: bool,
    /// Another dtype of ours measured in the same rounds (`q8_0` against `bf16`, …).
    compare_dtype: Option<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        rounds: 3,
        prompt_tokens: "128".into(),
        gen_tokens: "32".into(),
        dtype: "bf16".into(),
        baseline: None,
        llama_cpp: None,
        ik_llama_cpp: None,
        no_transformers: false,
        compare_dtype: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-transformers" {
            options.no_transformers = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--rounds" => options.rounds = value.parse().map_err(|_| "--rounds takes a number")?,
            "--prompt-tokens" => options.prompt_tokens = value,
            "--gen-tokens" => options.gen_tokens = value,
            "--dtype" => options.dtype = value,
            "--baseline" => options.baseline = Some(value),
            "--llama-cpp" => options.llama_cpp = Some(value),
            "--ik-llama-cpp" => options.ik_llama_cpp = Some(value),
            "--compare-dtype" => options.compare_dtype = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.ik_llama_cpp.is_some() && options.llama_cpp.is_none() {
        return Err("--ik-llama-cpp runs on the GGUF files --llama-cpp makes: give both".into());
    }
    if KMIXES.contains(&options.dtype.as_str()) && options.llama_cpp.is_none() {
        return Err(format!(
            "--dtype {}: ours runs the GGUF file llama.cpp's llama-quantize makes: give --llama-cpp",
            options.dtype
        ));
    }
    Ok(options)
}

/// The K-quant mixes, which ours runs from llama.cpp's GGUF file (the same file).
const KMIXES: [&str; 3] = ["q4_k_m", "q5_k_m", "q6_k"];

pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    let model = root().join(MODEL_DIR);
    ensure_checkpoint()?;
    run_command(Command::new("cargo").args(["build", "--release", "-p", "llmjp-cli"]))?;
    let weights_mb = weights_size_mb(&model)?;

    let llama = match &options.llama_cpp {
        Some(src) => Some(crate::llama_cpp::LlamaCpp::prepare(src, &options.dtype)?),
        None => None,
    };
    let ik = match (&options.ik_llama_cpp, &llama) {
        (Some(src), Some(llama)) => Some(llama.with_ik(src)),
        _ => None,
    };
    let gguf = llama.as_ref().map(|l| l.gguf.clone());
    let llmjp_cmd = |binary: std::path::PathBuf, o: &Options, dtype: &str| {
        let mut c = Command::new(binary);
        c.arg("bench");
        match &gguf {
            // A K-quant mix: llama.cpp's file, imported as stored.
            Some(file) if KMIXES.contains(&dtype) => {
                c.arg("--model").arg(file).args(["--tokenizer", MODEL_DIR]);
            }
            _ => {
                c.args(["--model", MODEL_DIR, "--dtype", dtype]);
            }
        }
        c.args(["--device", "cpu", "--format", "json"]).args([
            "--prompt-tokens",
            &o.prompt_tokens,
            "--gen-tokens",
            &o.gen_tokens,
        ]);
        c
    };
    let hf_cmd = |o: &Options| {
        let mut c = Command::new("python3");
        c.args(["xtask/bench/hf_bench.py", MODEL_DIR, "--dtype", "bf16"])
            .args([
                "--prompt-tokens",
                &o.prompt_tokens,
                "--gen-tokens",
                &o.gen_tokens,
            ]);
        c
    };
    let ours_binary = root().join("target/release/llmjp");
    let (mut ours, mut hf, mut reads, mut base) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut llama_runs, mut ik_runs, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=options.rounds {
        reads.push(read_files_once(&model)?);
        eprintln!("round {round}/{}: llmjp", options.rounds);
        ours.push(last_json(&output(&mut llmjp_cmd(
            ours_binary.clone(),
            &options,
            &options.dtype,
        ))?)?);
        if let Some(dtype) = &options.compare_dtype {
            eprintln!("round {round}/{}: llmjp {dtype}", options.rounds);
            let binary = ours_binary.clone();
            other.push(last_json(&output(&mut llmjp_cmd(
                binary, &options, dtype,
            ))?)?);
        }
        if let Some(baseline) = &options.baseline {
            eprintln!("round {round}/{}: baseline {baseline}", options.rounds);
            let binary = std::path::PathBuf::from(baseline);
            base.push(last_json(&output(&mut llmjp_cmd(
                binary,
                &options,
                &options.dtype,
            ))?)?);
        }
        if let Some(llama) = &llama {
            eprintln!("round {round}/{}: llama.cpp", options.rounds);
            llama_runs.push(llama.bench(&options.prompt_tokens, &options.gen_tokens)?);
        }
        if let Some(ik) = &ik {
            eprintln!("round {round}/{}: ik_llama.cpp", options.rounds);
            ik_runs.push(ik.bench(&options.prompt_tokens, &options.gen_tokens)?);
        }
        if !options.no_transformers {
            eprintln!("round {round}/{}: transformers", options.rounds);
            hf.push(last_json(&output(&mut hf_cmd(&options))?)?);
        }
    }

    println!(
        "llm-jp-3.1-1.8b shape, random weights stored bf16 ({weights_mb:.0} MB), {} prompt tokens, {} generated, greedy, median of {} alternating rounds",
        options.prompt_tokens, options.gen_tokens, options.rounds
    );
    if !options.no_transformers {
        println!(
            "{:<16} {:>14} {:>22} {:>8}",
            "metric",
            format!("llmjp {}", options.dtype),
            "transformers bf16",
            "ratio"
        );
        for metric in METRICS {
            let a = median(&ours, metric)?;
            let b = median(&hf, metric)?;
            println!("{metric:<16} {a:>14.2} {b:>22.2} {:>7.2}x", a / b);
        }
    } else {
        for metric in METRICS {
            println!(
                "llmjp {} {metric}: {:.2}",
                options.dtype,
                median(&ours, metric)?
            );
        }
    }
    if let Some(baseline) = &options.baseline {
        println!(
            "{:<16} {:>14} {:>22} {:>8}",
            "metric", "llmjp (this build)", "baseline", "ratio"
        );
        for metric in METRICS {
            let a = median(&ours, metric)?;
            let b = median(&base, metric)?;
            println!("{metric:<16} {a:>14.2} {b:>22.2} {:>7.2}x", a / b);
        }
        println!("baseline: {baseline}");
    }
    if let Some(dtype) = &options.compare_dtype {
        println!(
            "{:<16} {:>14} {:>22} {:>8}",
            "metric",
            format!("llmjp {}", options.dtype),
            format!("llmjp {dtype}"),
            "ratio"
        );
        for metric in METRICS {
            let a = median(&ours, metric)?;
            let b = median(&other, metric)?;
            println!("{metric:<16} {a:>14.2} {b:>22.2} {:>7.2}x", a / b);
        }
    }
    if let Some(llama) = &llama {
        println!(
            "{:<16} {:>14} {:>22} {:>8}",
            "metric",
            format!("llmjp {}", options.dtype),
            format!("llama.cpp {}", llama.format),
            "ratio"
        );
        for metric in ["prefill_tok_s", "decode_tok_s"] {
            let a = median(&ours, metric)?;
            let b = median(&llama_runs, metric)?;
            println!("{metric:<16} {a:>14.2} {b:>22.2} {:>7.2}x", a / b);
        }
        println!(
            "llama.cpp: {} ({} threads)",
            llama.gguf.display(),
            llama.threads
        );
    }
    if let Some(ik) = &ik {
        println!(
            "{:<16} {:>14} {:>22} {:>8}",
            "metric",
            format!("llmjp {}", options.dtype),
            format!("ik_llama.cpp {} -rtr 1", ik.format),
            "ratio"
        );
        for metric in ["prefill_tok_s", "decode_tok_s"] {
            let a = median(&ours, metric)?;
            let b = median(&ik_runs, metric)?;
            println!("{metric:<16} {a:>14.2} {b:>22.2} {:>7.2}x", a / b);
        }
    }
    let rss = median(&ours, "peak_rss_mb")?;
    println!("llmjp peak RSS / weights size: {:.2}", rss / weights_mb);
    reads.sort_by(f64::total_cmp);
    let read = reads[reads.len() / 2];
    let load = median(&ours, "load_s")?;
    println!(
        "reading the checkpoint files once: {read:.2} s; llmjp load / that: {:.2}",
        load / read
    );
    Ok(())
}

/// Seconds to read every safetensors file of `dir` once, start to end (as `cat` would).
fn read_files_once(dir: &std::path::Path) -> Result<f64, String> {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut buffer = vec![0u8; 8 << 20];
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            while file.read(&mut buffer).map_err(|e| e.to_string())? > 0 {}
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn last_json(text: &str) -> Result<Value, String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("no JSON in output")?;
    serde_json::from_str(line).map_err(|e| format!("bad JSON {line:?}: {e}"))
}

fn median(runs: &[Value], metric: &str) -> Result<f64, String> {
    let mut values: Vec<f64> = runs
        .iter()
        .map(|r| {
            r[metric]
                .as_f64()
                .ok_or_else(|| format!("{metric} missing in {r}"))
        })
        .collect::<Result<_, _>>()?;
    values.sort_by(f64::total_cmp);
    Ok(values[values.len() / 2])
}

fn weights_size_mb(dir: &std::path::Path) -> Result<f64, String> {
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            bytes += path.metadata().map_err(|e| e.to_string())?.len();
        }
    }
    Ok(bytes as f64 / (1024.0 * 1024.0))
}
