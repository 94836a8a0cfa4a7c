//! `llmjp bench`: prefill and decode speed on a synthetic prompt, greedy.

use std::io::Write;

use llmjp::{GenerateOptions, SamplingParams};
use serde::Serialize;

use crate::model_args::ModelArgs;
use crate::{Format, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Length of the synthetic prompt, BOS included.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to generate (EOS does not stop the run).
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct Report {
    load_s: f64,
    /// Time to the first token after loading: the prompt's prefill and its sampling.
    ttft_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    peak_rss_mb: f64,
    prompt_tokens: usize,
    gen_tokens: usize,
    device: String,
}

const TEXT: &str = "自然言語処理は、人間の言語をコンピュータで扱うための技術です。";

pub fn run(args: Args, out: &mut impl Write) -> Result {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        return Err("--prompt-tokens and --gen-tokens must be at least 1".into());
    }
    let llm = args.model.load()?;
    let context = llm.config().max_position_embeddings;
    match args.prompt_tokens.checked_add(args.gen_tokens) {
        Some(needed) if needed <= context => {}
        _ => {
            return Err(format!(
                "--prompt-tokens {} and --gen-tokens {} need more positions than the model's context of {context} holds",
                args.prompt_tokens, args.gen_tokens
            )
            .into())
        }
    }
    let unit = llm.encode_raw(TEXT)?;
    let mut prompt = vec![unit[0]];
    while prompt.len() < args.prompt_tokens {
        prompt.extend_from_slice(&unit[1..]);
    }
    prompt.truncate(args.prompt_tokens);
    let options = GenerateOptions {
        max_new_tokens: args.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        processors: Vec::new(),
    };
    let generation = llm.generate(&prompt, &options, &mut |_| true)?;
    let t = generation.timings;
    let report = Report {
        load_s: t.load_s,
        ttft_s: t.prefill_s,
        prefill_tok_s: t.prefill_tok_s(),
        decode_tok_s: t.decode_tok_s(),
        peak_rss_mb: peak_rss_mb(),
        prompt_tokens: prompt.len(),
        gen_tokens: generation.generated_ids.len(),
        device: llm.device().to_string(),
    };
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        Format::Text => writeln!(
            out,
            "load {:.2} s, first token {:.3} s, prefill {:.1} tok/s ({} tokens), decode {:.2} tok/s ({} tokens), peak RSS {:.0} MB on {}",
            report.load_s, report.ttft_s, report.prefill_tok_s, report.prompt_tokens, report.decode_tok_s, report.gen_tokens, report.peak_rss_mb, report.device
        )?,
    }
    Ok(())
}

/// Peak resident memory of this process (VmHWM), in MB; 0 where /proc is unavailable.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
