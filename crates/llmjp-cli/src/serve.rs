//! `llmjp serve`: the OpenAI-compatible server (see the llmjp-server crate).
//!
//! The first SIGINT or SIGTERM shuts it down gracefully (exit 0 once stopped, within the
//! grace period and a few seconds); a second one exits at once with 128 + its number
//! (130 for SIGINT, 143 for SIGTERM). Status lines go to stderr; when stderr cannot be
//! written they are dropped.

use std::fmt::Display;
use std::io::Write;
use std::time::Duration;

use llmjp_server::{Server, ServerConfig, ShutdownSignals};

use crate::model_args::ModelArgs;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to bind (loopback by default; 0.0.0.0 serves the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model name clients give and /v1/models lists [default: --model].
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most requests waiting; more get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// KV cache budget, MiB (running sequences and the prefix cache).
    #[arg(long, default_value_t = 4096)]
    kv_cache_mib: usize,
    /// Token blocks (32 tokens each) the prefix cache keeps; 0 turns it off.
    #[arg(long, default_value_t = 4096)]
    prefix_cache_blocks: usize,
    /// Most tokens per forward pass; long prompts are prefilled in chunks.
    #[arg(long, default_value_t = 512)]
    max_step_tokens: usize,
    /// max_tokens of requests that give none.
    #[arg(long, default_value_t = 512)]
    default_max_tokens: usize,
    /// Seconds a request may run.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Require `Authorization: Bearer KEY` on /v1 routes [env: LLMJP_API_KEY]; an empty
    /// key means no key.
    #[arg(long, env = "LLMJP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body in bytes; a larger declared body is answered 413 unread.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds to receive a request's headers (also the longest idle keep-alive); 408 past it.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    header_read_timeout: Duration,
    /// Seconds to receive a request's body; 408 past it.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    body_read_timeout: Duration,
    /// Seconds a response may wait between two writes (a client that stops reading);
    /// the connection is closed past it.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds)]
    send_timeout: Duration,
    /// Most connections open at once (more wait in the listen backlog).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Seconds running requests get to finish after a SIGINT or SIGTERM before they are
    /// cut (a second signal exits at once).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    shutdown_grace: Duration,
}

/// A number of seconds, fractions allowed.
fn seconds(text: &str) -> std::result::Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(value).map_err(|_| format!("`{text}` is not a number of seconds"))
}

/// Writes a status line on stderr; a stderr that cannot be written loses it.
fn status(line: impl Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn run(args: Args) -> Result {
    let llm = args.model.load()?;
    let mut config = ServerConfig::new(
        args.served_model_name
            .unwrap_or_else(|| args.model.model_name().to_owned()),
    );
    config.host = args.host;
    config.port = args.port;
    if args
        .api_key
        .as_ref()
        .is_some_and(|key| key.trim().is_empty())
    {
        status("llmjp: the API key (--api-key or LLMJP_API_KEY) is empty: serving without one");
    }
    config.api_key = args.api_key;
    config.max_body_bytes = args.max_body_bytes;
    config.header_read_timeout = args.header_read_timeout;
    config.body_read_timeout = args.body_read_timeout;
    config.send_timeout = args.send_timeout;
    config.max_connections = args.max_connections;
    config.shutdown_grace = args.shutdown_grace;
    config.default_max_tokens = args.default_max_tokens;
    config.engine.max_batch = args.max_batch;
    config.engine.max_queue = args.max_queue;
    config.engine.kv_budget_bytes = args.kv_cache_mib.saturating_mul(1 << 20);
    config.engine.prefix_cache_blocks = args.prefix_cache_blocks;
    config.engine.max_step_tokens = args.max_step_tokens;
    config.engine.prefill_chunk = args.max_step_tokens.clamp(1, 256);
    config.engine.request_timeout = Duration::from_secs(args.request_timeout);
    let runtime = tokio::runtime::Runtime::new()?;
    let result: Result = runtime.block_on(async {
        let signals = ShutdownSignals::new()?;
        let server = Server::bind(llm, config).await?;
        status(format_args!(
            "llmjp: serving on http://{}",
            server.local_addr()
        ));
        server.run(first_of(signals)).await?;
        status("llmjp: stopped");
        Ok(())
    });
    // Encodings still on the blocking pool are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on the first stop signal; the second exits the process at once.
async fn first_of(mut signals: ShutdownSignals) {
    let (first, first_seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        status(format_args!(
            "llmjp: {}: shutting down (a second signal exits at once)",
            signal.name()
        ));
        let _ = first.send(());
        let signal = signals.recv().await;
        status(format_args!("llmjp: {}: exiting now", signal.name()));
        std::process::exit(signal.exit_code().into());
    });
    let _ = first_seen.await;
}
