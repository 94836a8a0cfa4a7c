//! An OpenAI-compatible HTTP server for the llm-jp-3.1 models, on tokio and axum.
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent events
//!   with `"stream": true`), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus).
//! - **Continuous batching** ([`engine`]): one engine thread advances every running request
//!   by one batched forward pass per step, admitting new requests between steps and
//!   prefilling long prompts in chunks.
//! - **KV cache in pages under a budget**, and a **shared-prefix cache** ([`prefix`]): a
//!   prompt that starts like an earlier one (every llm-jp chat starts with the same system
//!   sentence) continues from its keys and values, whose pages it shares.
//! - Errors are OpenAI's error object with the right status (400, 401, 404, 408, 413, 429,
//!   503); clients that go away free their sequence at the next step.
//!
//! ```
//! use std::time::Duration;
//! use llmjp::{backend::Cpu, Llm, LoadOptions, Pipeline};
//! use llmjp_server::{Server, ServerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(tokenizer_dir) = llmjp_testdata::tokenizer_dir() else { return Ok(()) };
//! let model = llmjp_testdata::fixture_dir("tiny-llmjp");
//! let options = LoadOptions { tokenizer_dir: Some(tokenizer_dir), ..LoadOptions::default() };
//! let pipeline = Pipeline::<Cpu>::load(model.to_str().unwrap(), &options, &Default::default(), &mut |_, _| {})?;
//! let config = ServerConfig { port: 0, ..ServerConfig::new("tiny") };
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let server = Server::bind(Llm::Cpu(pipeline), config).await?;
//!     println!("listening on http://{}", server.local_addr());
//!     // Serve until the future resolves (`llmjp_server::shutdown_signal()` in a binary).
//!     server.run(tokio::time::sleep(Duration::from_millis(10))).await
//! })?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
pub mod engine;
mod error;
mod http;
pub mod metrics;
pub mod prefix;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use llmjp::Llm;
use tokio::net::TcpListener;

pub use engine::EngineConfig;
pub use error::{ApiError, ServerError};

use crate::api::Limits;
use crate::http::{App, Encoder};
use crate::metrics::Metrics;

/// How the server listens and what it allows.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; loopback by default.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// The name `/v1/models` lists and requests give as `model`.
    pub model_name: String,
    /// With a key, the `/v1` routes need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `max_tokens` of requests that give none (cut to the context).
    pub default_max_tokens: usize,
    /// Most stop strings per request.
    pub max_stops: usize,
    /// After a shutdown signal, running requests get this long to finish before they are
    /// cancelled.
    pub shutdown_grace: Duration,
    /// Scheduling, KV budget and prefix cache.
    pub engine: EngineConfig,
}

impl ServerConfig {
    /// Defaults for serving `model_name` on 127.0.0.1:8080.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model_name: model_name.into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            default_max_tokens: 512,
            max_stops: 16,
            shutdown_grace: Duration::from_secs(30),
            engine: EngineConfig::default(),
        }
    }
}

/// A bound server: its engine running, its listener open.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    grace: Duration,
}

impl Server {
    /// Starts the engine on `llm` and binds the address.
    pub async fn bind(llm: Llm, config: ServerConfig) -> Result<Self, ServerError> {
        let encoder = Encoder {
            tokenizer: llm.tokenizer().clone(),
            template: llm.template().clone(),
            context: llm.config().max_position_embeddings,
        };
        let metrics = Arc::new(Metrics::default());
        let address = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("binding {address}"),
                source,
            })?;
        let engine = engine::Engine::start(llm, config.engine.clone(), metrics.clone())?;
        let app = Arc::new(App {
            engine,
            encoder,
            limits: Limits {
                model: config.model_name.clone(),
                default_max_tokens: config.default_max_tokens.max(1),
                max_stops: config.max_stops,
            },
            metrics,
            api_key: config.api_key.clone(),
            max_body_bytes: config.max_body_bytes,
            next_id: AtomicU64::new(0),
        });
        Ok(Self {
            app,
            listener,
            grace: config.shutdown_grace,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves; then stops taking requests, lets running ones
    /// finish for the grace period, cancels the rest and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let app = self.app.clone();
        let grace = self.grace;
        let router = http::router(self.app.clone());
        let signal = async move {
            shutdown.await;
            app.engine.drain();
            let engine = app.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tokio::task::spawn_blocking(move || engine.engine.stop());
            });
        };
        axum::serve(self.listener, router)
            .with_graceful_shutdown(signal)
            .await
            .map_err(|source| ServerError::Io {
                context: "serving".into(),
                source,
            })?;
        let app = self.app;
        tokio::task::spawn_blocking(move || app.engine.stop())
            .await
            .map_err(|e| ServerError::Engine(e.to_string()))?;
        Ok(())
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
