//! The mixture-of-experts model (llm-jp-3.1-8x13b-instruct4, Mixtral architecture).
//!
//! Run: `cargo run --release --example moe [-- MODEL]`. MODEL defaults to
//! llm-jp/llm-jp-3.1-8x13b-instruct4 (about 145 GB in bf16: it needs a large GPU, e.g.
//! `--features cuda` on an H200). A folder without a tokenizer — such as the tiny test model
//! `crates/llmjp-testdata/fixtures/mixtral-top2-bf16` — runs greedy on token ids instead.

use llmjp::backend::Cpu;
use llmjp::{
    CausalLm, ComputeDtype, Device, GenerateOptions, Llm, LoadOptions, Message, ModelSource,
    SamplingParams,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "llm-jp/llm-jp-3.1-8x13b-instruct4".into());
    let folder = std::path::Path::new(&model);
    if folder.is_dir() && !folder.join("tokenizer.json").is_file() {
        return greedy_on_ids(folder);
    }
    let llm = Llm::load(
        &model.parse::<ModelSource>()?,
        Device::auto(),
        &LoadOptions::default(),
        &mut |done, total| {
            eprint!("\rloading {done}/{total}");
        },
    )?;
    eprintln!();
    let config = llm.config();
    println!(
        "{:?}: {} layers, {} experts, {} per token",
        config.architecture,
        config.num_hidden_layers,
        config.num_local_experts,
        config.num_experts_per_tok
    );
    let chat = [Message::user("混合エキスパートモデルとは何ですか。")];
    let answer = llm.chat(&chat, &GenerateOptions::default(), &mut |text| {
        print!("{text}");
        true
    })?;
    println!("\n[{:.1} tok/s]", answer.timings.decode_tok_s());
    Ok(())
}

/// Prefill a few ids, then decode greedily with the KV cache.
fn greedy_on_ids(folder: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let model = CausalLm::<Cpu>::from_dir(folder, ComputeDtype::F32, &Default::default())?;
    let config = model.config();
    println!(
        "{:?}: {} layers, {} experts, top-{}",
        config.architecture,
        config.num_hidden_layers,
        config.num_local_experts,
        config.num_experts_per_tok
    );
    let mut sampler = llmjp::Sampler::new(SamplingParams::greedy())?;
    let mut ids = vec![1u32, 17, 42, 99];
    let mut cache = model.new_cache(ids.len() + 16);
    let mut logits = model.forward_last(&ids, &mut cache)?;
    for _ in 0..16 {
        let values = llmjp::crates::model::read_f32(logits)?;
        let next = sampler.sample(&values, &ids)?;
        ids.push(next);
        logits = model.forward_last(&[next], &mut cache)?;
    }
    println!("greedy ids: {ids:?}");
    Ok(())
}
