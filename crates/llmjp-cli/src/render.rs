//! `llmjp render`.

use std::io::Write;
use std::path::PathBuf;

use llmjp_chat::{ChatTemplate, RenderOptions};
use serde::Serialize;

use crate::{input, Format, ModelArg, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// JSON file with an array of {role, content} messages, or - for standard input.
    #[arg(long, value_name = "FILE|-")]
    messages: PathBuf,
    /// Do not append the header that starts the assistant's answer.
    #[arg(long)]
    no_generation_prompt: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct Rendered {
    prompt: String,
    ids: Vec<u32>,
}

pub fn run(args: Args, out: &mut impl Write) -> Result {
    let tokenizer = args.model.tokenizer()?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let from_stdin = args.messages.as_os_str() == "-";
    let source = if from_stdin {
        "standard input".to_string()
    } else {
        args.messages.display().to_string()
    };
    let text = if from_stdin {
        input::stdin()?
    } else {
        input::file(&args.messages)?
    };
    let messages: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{source}: invalid JSON: {e}"))?;
    let options = RenderOptions::generation_prompt(!args.no_generation_prompt);
    let prompt = template.render_json(&messages, &options)?;
    match args.format {
        Format::Text => write!(out, "{prompt}")?,
        Format::Json => {
            // The template writes the special tokens itself: encode without adding more.
            let ids = tokenizer.encode(&prompt, false)?;
            writeln!(out, "{}", serde_json::to_string(&Rendered { prompt, ids })?)?;
        }
    }
    Ok(())
}
