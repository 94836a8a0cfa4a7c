//! `llmjp chat`: an interactive conversation.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llmjp::{FinishReason, GenerateOptions, Message};

use crate::generate::{summary, DEFAULT_SYSTEM};
use crate::input::{read_line, Line, MAX_LINE_BYTES};
use crate::model_args::{ModelArgs, SamplingArgs};
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System message of the conversation.
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    system: String,
    #[command(flatten)]
    sampling: SamplingArgs,
}

const HELP: &str = "Type a message and press Enter. /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer.";

pub fn run(args: Args, out: &mut impl Write) -> Result {
    // Bad sampling parameters are reported before the model is loaded.
    let sampling = args.sampling.params();
    sampling.validate()?;
    let llm = args.model.load()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
    }
    let options = GenerateOptions {
        max_new_tokens: args.sampling.max_new_tokens,
        sampling,
        stop: args.sampling.stop.clone(),
        ignore_eos: false,
        processors: Vec::new(),
    };
    let fresh = || vec![Message::system(args.system.clone())];
    let mut history = fresh();
    writeln!(out, "{HELP}")?;
    let stdin = std::io::stdin();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let line = match read_line(&mut stdin.lock(), MAX_LINE_BYTES)? {
            Line::End => {
                writeln!(out)?;
                return Ok(());
            }
            Line::Text(line) => line,
            // A bad line is reported and skipped; the session goes on.
            Line::NotUtf8 => {
                status!("error: that line is not valid UTF-8 text; it was ignored.");
                continue;
            }
            Line::TooLong => {
                status!("error: that line is longer than {MAX_LINE_BYTES} bytes; it was ignored.");
                continue;
            }
        };
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history = fresh();
                writeln!(out, "(conversation reset)")?;
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        interrupted.store(false, Ordering::SeqCst);
        let mut write_error = None;
        let result = llm.chat(&history, &options, &mut |chunk| {
            if let Err(e) = write!(out, "{chunk}").and_then(|()| out.flush()) {
                write_error = Some(e);
                return false;
            }
            !interrupted.load(Ordering::SeqCst)
        });
        if let Some(e) = write_error {
            return Err(e.into());
        }
        match result {
            Ok(answer) => {
                writeln!(out)?;
                status!("{}", summary(&answer));
                if answer.finish_reason == FinishReason::Cancelled {
                    status!("(answer stopped)");
                }
                history.push(Message::assistant(answer.text));
            }
            // A failed turn (say, a conversation past the context) is reported and dropped;
            // the session goes on.
            Err(e) => {
                history.pop();
                status!("error: {e}");
            }
        }
    }
}
