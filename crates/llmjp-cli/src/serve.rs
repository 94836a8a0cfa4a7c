//! `llmjp serve`: the OpenAI-compatible server (see the llmjp-server crate).

use std::time::Duration;

use llmjp_server::{Server, ServerConfig};

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
    /// Require `Authorization: Bearer KEY` on /v1 routes [env: LLMJP_API_KEY].
    #[arg(long, env = "LLMJP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub fn run(args: Args) -> Result {
    let llm = args.model.load()?;
    let mut config = ServerConfig::new(
        args.served_model_name
            .unwrap_or_else(|| args.model.model_name().to_owned()),
    );
    config.host = args.host;
    config.port = args.port;
    config.api_key = args.api_key;
    config.default_max_tokens = args.default_max_tokens;
    config.engine.max_batch = args.max_batch;
    config.engine.max_queue = args.max_queue;
    config.engine.kv_budget_bytes = args.kv_cache_mib.saturating_mul(1 << 20);
    config.engine.prefix_cache_blocks = args.prefix_cache_blocks;
    config.engine.max_step_tokens = args.max_step_tokens;
    config.engine.prefill_chunk = args.max_step_tokens.clamp(1, 256);
    config.engine.request_timeout = Duration::from_secs(args.request_timeout);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = Server::bind(llm, config).await?;
        eprintln!("llmjp: serving on http://{}", server.local_addr());
        server.run(llmjp_server::shutdown_signal()).await?;
        eprintln!("llmjp: stopped");
        Ok(())
    })
}
