//! Streaming: text arrives chunk by chunk as tokens are generated, never splitting a
//! character, and the chunks add up to the whole answer.
//!
//! Run: `cargo run --release --example stream [-- MODEL [PROMPT]]`.

use std::io::Write;
use std::time::Instant;

use llmjp::{Device, GenerateOptions, Llm, LoadOptions, Message, ModelSource};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "llm-jp/llm-jp-3.1-1.8b-instruct4".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "日本の四季について教えてください。".into());
    let llm = Llm::load(
        &model.parse::<ModelSource>()?,
        Device::auto(),
        &LoadOptions::default(),
        &mut |_, _| {},
    )?;

    let start = Instant::now();
    let mut chunks = Vec::new();
    let answer = llm.chat(
        &[Message::user(prompt)],
        &GenerateOptions::default(),
        &mut |chunk| {
            print!("{chunk}");
            let _ = std::io::stdout().flush();
            chunks.push((start.elapsed().as_millis(), chunk.to_string()));
            true
        },
    )?;
    println!("\n---");
    for (ms, chunk) in &chunks {
        println!("{ms:>6} ms  {chunk:?}");
    }
    assert_eq!(
        chunks.iter().map(|(_, c)| c.as_str()).collect::<String>(),
        answer.text
    );
    println!(
        "{} tokens, finish: {}, decode {:.1} tok/s",
        answer.generated_ids.len(),
        answer.finish_reason.as_str(),
        answer.timings.decode_tok_s()
    );
    Ok(())
}
