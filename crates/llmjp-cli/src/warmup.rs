//! `llmjp warmup`: runs the kernels a generation needs once, so that they are compiled and
//! autotuned into the kernel cache ahead of the first real request (on a GPU; on the CPU it
//! only measures).

use std::io::Write;
use std::time::Instant;

use llmjp::{GenerateOptions, SamplingParams};

use crate::model_args::ModelArgs;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Longest prompt to prepare for: prefills of 1, 16, 32, … tokens up to this run once
    /// (whatever burn's ops autotune is tuned per power-of-two size class).
    #[arg(long, default_value_t = 512)]
    max_prompt: usize,
}

pub fn run(args: Args, out: &mut impl Write) -> Result {
    let start = Instant::now();
    let llm = args.model.load()?;
    let context = llm.config().max_position_embeddings;
    let max_prompt = args.max_prompt.clamp(1, context.saturating_sub(2).max(1));
    let options = GenerateOptions {
        max_new_tokens: 2,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        processors: Vec::new(),
    };
    let mut lengths: Vec<usize> = std::iter::successors(Some(16usize), |n| Some(n * 2))
        .take_while(|&n| n < max_prompt)
        .collect();
    lengths.insert(0, 1);
    lengths.push(max_prompt);
    for n in lengths {
        let prompt: Vec<u32> = (0..n).map(|i| 100 + (i as u32 * 7919) % 20_000).collect();
        let t = Instant::now();
        llm.generate(&prompt, &options, &mut |_| true)?;
        writeln!(
            out,
            "prompt of {n} tokens: {:.2} s",
            t.elapsed().as_secs_f64()
        )?;
    }
    writeln!(out, "warm in {:.1} s", start.elapsed().as_secs_f64())?;
    Ok(())
}
