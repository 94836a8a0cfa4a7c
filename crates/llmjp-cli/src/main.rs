//! `llmjp`: the command-line face of the llm-jp crates.
//!
//! ```text
//! llmjp tokenize --model DIR|ORG/NAME [--no-special] [--format text|json] [TEXT]
//! llmjp render --model DIR|ORG/NAME --messages FILE|- [--no-generation-prompt] [--format text|json]
//! llmjp generate [--model DIR|ORG/NAME] [--prompt TEXT] [--raw] [sampling options] [--format text|json]
//! llmjp chat [--model DIR|ORG/NAME] [sampling options]
//! llmjp bench [--model DIR|ORG/NAME] [--prompt-tokens 128] [--gen-tokens 32] [--format text|json]
//! llmjp serve [--model DIR|ORG/NAME] [--host 127.0.0.1] [--port 8080] [--max-batch 16] [--api-key KEY]
//! llmjp quantize --model DIR|ORG/NAME [--format q8_0|q4_0] --out DIR
//! ```
//!
//! `--dtype q8_0|q4_0` quantizes a float checkpoint on load.
//!
//! Every failure prints one line on stderr and exits non-zero.
//!
//! Features: `cuda` adds `--device cuda[:N]` (burn-cuda; off by default).

/// A line on standard error that never panics (an unwritable stderr, `2>/dev/full`, loses
/// the line instead of killing the process).
macro_rules! status {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod chat;
mod generate;
mod input;
mod model_args;
mod quantize;
mod render;
mod serve;
mod tokenize;
mod warmup;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "llmjp",
    version,
    about = "Run the llm-jp-3.1 models natively in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Token ids and tokens of TEXT, or of each JSON-string line of standard input.
    Tokenize(tokenize::Args),
    /// Render a JSON array of {role, content} messages with the model's chat template.
    Render(render::Args),
    /// Generate an answer to a prompt (wrapped in the chat template unless --raw).
    Generate(generate::Args),
    /// Chat interactively.
    Chat(chat::Args),
    /// Measure load time, prefill and decode speed on a synthetic prompt.
    Bench(bench::Args),
    /// Run a generation's kernels once so a GPU compiles and caches them ahead of use.
    Warmup(warmup::Args),
    /// Serve the OpenAI API (chat completions, completions, models) over HTTP.
    Serve(serve::Args),
    /// Write a copy of a model with its linear weights quantized (q8_0, q4_0), which loads
    /// in place.
    Quantize(quantize::Args),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Where the tokenizer files live.
#[derive(clap::Args, Debug)]
pub struct ModelArg {
    /// Folder holding tokenizer.json and tokenizer_config.json, or a Hub id org/name (only
    /// the tokenizer files are downloaded).
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: String,
}

impl ModelArg {
    /// The tokenizer of the folder or Hub repository.
    pub fn tokenizer(&self) -> Result<llmjp_tokenizer::Tokenizer> {
        let mut hub = llmjp::HubOptions::from_env();
        hub.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let dir = llmjp::crates::weights::resolve_tokenizer(&self.model, &hub)?;
        Ok(llmjp_tokenizer::Tokenizer::from_dir(dir)?)
    }
}

fn main() -> ExitCode {
    // A model file truncated while mapped ends the process with a message naming it, not a
    // bare SIGBUS (an application's choice, so the libraries leave it to us).
    llmjp::crates::weights::sigbus::install_handler();
    let cli = Cli::parse();
    let mut out = io::stdout().lock();
    let result = match cli.command {
        Command::Tokenize(args) => tokenize::run(args, &mut out),
        Command::Render(args) => render::run(args, &mut out),
        Command::Generate(args) => generate::run(args, &mut out),
        Command::Chat(args) => chat::run(args, &mut out),
        Command::Bench(args) => bench::run(args, &mut out),
        Command::Warmup(args) => warmup::run(args, &mut out),
        Command::Serve(args) => serve::run(args),
        Command::Quantize(args) => quantize::run(args, &mut out),
    };
    let result = result.and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`llmjp ... | head`) is not an error.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            status!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
