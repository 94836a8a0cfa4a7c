//! Tokenize text with the llm-jp tokenizer, show the tokens, decode back, and stream-decode.
//!
//! Run: `cargo run --release --example tokenize [-- TOKENIZER_DIR [TEXT]]`
//! (default folder: ../shared/llm-jp-3-tokenizer).

use llmjp::Tokenizer;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "../shared/llm-jp-3-tokenizer".into());
    let text = args
        .next()
        .unwrap_or_else(|| "自然言語処理で𠮷野家の牛丼🍣を語る".into());
    let tokenizer = Tokenizer::from_dir(&dir)?;

    let ids = tokenizer.encode(&text, true)?;
    println!("{} tokens:", ids.len());
    for &id in &ids {
        println!("{id:>6}  {}", tokenizer.id_to_token(id).unwrap_or_default());
    }
    println!("decoded: {}", tokenizer.decode(&ids, true)?);

    let mut stream = tokenizer.stream_decoder(true);
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.extend(stream.step(id)?);
    }
    chunks.extend(stream.finish()?);
    println!("streamed chunks: {chunks:?}");
    Ok(())
}
