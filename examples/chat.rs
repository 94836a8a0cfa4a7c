//! A minimal chat loop over the facade: the conversation so far is the prompt of each turn.
//!
//! Run: `cargo run --release --example chat [-- MODEL]`, then type; an empty line quits.

use std::io::{BufRead, Write};

use llmjp::{Device, GenerateOptions, Llm, LoadOptions, Message, ModelSource};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "llm-jp/llm-jp-3.1-1.8b-instruct4".into());
    let llm = Llm::load(
        &model.parse::<ModelSource>()?,
        Device::auto(),
        &LoadOptions::default(),
        &mut |_, _| {},
    )?;
    let options = GenerateOptions::default();
    let mut history = vec![Message::system(
        "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
    )];
    let stdin = std::io::stdin();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(Message::user(line.trim_end()));
        let answer = llm.chat(&history, &options, &mut |text| {
            print!("{text}");
            std::io::stdout().flush().is_ok()
        })?;
        println!();
        history.push(Message::assistant(answer.text));
    }
}
