//! `llmjp tokenize`.

use std::io::Write;

use llmjp_tokenizer::Tokenizer;
use serde::Serialize;

use crate::input::{read_line, Line, MAX_LINE_BYTES};
use crate::{Format, ModelArg, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Do not add special tokens (the BOS).
    #[arg(long)]
    no_special: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Text to tokenize. Without it, each line of standard input is a JSON string, and each
    /// output line a JSON object {"ids": [...], "tokens": [...]}.
    text: Option<String>,
}

#[derive(Serialize)]
struct Tokens {
    ids: Vec<u32>,
    tokens: Vec<String>,
}

fn tokenize(tokenizer: &Tokenizer, text: &str, add_special: bool) -> Result<Tokens> {
    let ids = tokenizer.encode(text, add_special)?;
    let tokens = ids
        .iter()
        .map(|&id| tokenizer.id_to_token(id).unwrap_or_default())
        .collect();
    Ok(Tokens { ids, tokens })
}

pub fn run(args: Args, out: &mut impl Write) -> Result {
    let tokenizer = args.model.tokenizer()?;
    let add_special = !args.no_special;
    let Some(text) = args.text else {
        return run_json_lines(&tokenizer, add_special, out);
    };
    let tokens = tokenize(&tokenizer, &text, add_special)?;
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&tokens)?)?,
        Format::Text => {
            for (id, token) in tokens.ids.iter().zip(&tokens.tokens) {
                writeln!(out, "{id:>6}  {token}")?;
            }
        }
    }
    Ok(())
}

fn run_json_lines(tokenizer: &Tokenizer, add_special: bool, out: &mut impl Write) -> Result {
    let mut input = std::io::stdin().lock();
    for number in 1.. {
        let line = match read_line(&mut input, MAX_LINE_BYTES)? {
            Line::End => break,
            Line::Text(line) => line,
            Line::NotUtf8 => {
                return Err(format!("standard input line {number} is not valid UTF-8").into())
            }
            Line::TooLong => {
                return Err(format!(
                    "standard input line {number} is longer than {MAX_LINE_BYTES} bytes"
                )
                .into())
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let text: String = serde_json::from_str(&line)
            .map_err(|e| format!("standard input line {number}: not a JSON string: {e}"))?;
        let tokens = tokenize(tokenizer, &text, add_special)?;
        writeln!(out, "{}", serde_json::to_string(&tokens)?)?;
    }
    Ok(())
}
