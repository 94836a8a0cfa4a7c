//! `llmjp generate`.

use std::io::Write;

use llmjp::{GenerateOptions, Generation, Message};
use serde::Serialize;

use crate::model_args::{ModelArgs, SamplingArgs};
use crate::{input, Format, Result};

/// The system message of the model card's example.
pub const DEFAULT_SYSTEM: &str =
    "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt [default: standard input].
    #[arg(long)]
    prompt: Option<String>,
    /// System message of the chat (llm-jp's template replaces it with its fixed sentence).
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    system: String,
    /// Use the prompt as it is, without the chat template (the BOS is added).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    text: &'a str,
    finish_reason: &'static str,
    timings: JsonTimings,
    seed: u64,
}

#[derive(Serialize)]
struct JsonTimings {
    load_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

pub fn run(args: Args, out: &mut impl Write) -> Result {
    let prompt = match args.prompt {
        Some(p) => p,
        None => input::stdin()?,
    };
    // Bad sampling parameters are reported before the model is loaded.
    let sampling = args.sampling.params();
    sampling.validate()?;
    let llm = args.model.load()?;
    let ids = if args.raw {
        llm.encode_raw(&prompt)?
    } else {
        llm.encode_chat(&[Message::system(args.system), Message::user(prompt)])?
    };
    let options = GenerateOptions {
        max_new_tokens: args.sampling.max_new_tokens,
        sampling,
        stop: args.sampling.stop.clone(),
        ignore_eos: false,
        processors: Vec::new(),
    };
    let streaming = args.format == Format::Text;
    let mut write_error = None;
    let generation = llm.generate(&ids, &options, &mut |chunk| {
        if !streaming {
            return true;
        }
        match write!(out, "{chunk}").and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    match args.format {
        Format::Text => {
            writeln!(out)?;
            status!("{}", summary(&generation));
        }
        Format::Json => {
            let t = generation.timings;
            let json = JsonOutput {
                prompt_ids: &generation.prompt_ids,
                generated_ids: &generation.generated_ids,
                text: &generation.text,
                finish_reason: generation.finish_reason.as_str(),
                timings: JsonTimings {
                    load_s: t.load_s,
                    prefill_tok_s: t.prefill_tok_s(),
                    decode_tok_s: t.decode_tok_s(),
                },
                seed: options.sampling.seed,
            };
            writeln!(out, "{}", serde_json::to_string(&json)?)?;
        }
    }
    Ok(())
}

/// The one-line summary printed after streamed text.
pub fn summary(g: &Generation) -> String {
    format!(
        "[{} tokens, finish: {}, prefill {:.1} tok/s, decode {:.1} tok/s]",
        g.generated_ids.len(),
        g.finish_reason.as_str(),
        g.timings.prefill_tok_s(),
        g.timings.decode_tok_s()
    )
}
