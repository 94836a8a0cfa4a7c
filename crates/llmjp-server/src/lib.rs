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
//! - **Hostile clients are bounded** ([`ServerConfig`]): request headers must arrive
//!   within `header_read_timeout` and bodies within `body_read_timeout` (else 408, or the
//!   connection is closed when it was idle); a declared `Content-Length` over
//!   `max_body_bytes` is answered 413 before the body is read, a chunked body is cut at the
//!   limit with 413; at most `max_connections` connections are open at once.
//! - **Shutdown is bounded**: the listener closes, idle connections and those holding a
//!   half-sent request close at once, running requests get `shutdown_grace` to finish;
//!   then they end with a `shutting_down` error (a last SSE event in a stream) and every
//!   connection is closed. [`ShutdownSignals`] gives a binary the first and second signal.
//!
//! ```
//! use std::time::Duration;
//! use llmjp::{backend::Cpu, Llm, LoadOptions, ModelSource, Pipeline};
//! use llmjp_server::{Server, ServerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Some(tokenizer_dir) = llmjp_testdata::tokenizer_dir() else { return Ok(()) };
//! let model = llmjp_testdata::fixture_dir("tiny-llmjp");
//! let options = LoadOptions { tokenizer_dir: Some(tokenizer_dir), ..LoadOptions::default() };
//! let pipeline = Pipeline::<Cpu>::load(&ModelSource::Dir(model), &options, &Default::default(), &mut |_, _| {})?;
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
mod connection;
pub mod engine;
mod error;
mod http;
pub mod metrics;
pub mod prefix;
pub mod schedule;
mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use llmjp::Llm;
use tokio::net::TcpListener;

pub use connection::{MAX_HEADERS, MAX_HEAD_BYTES};
pub use engine::EngineConfig;
pub use error::{ApiError, ServerError};
pub use signals::{shutdown_signal, ShutdownSignal, ShutdownSignals};

use crate::api::Limits;
use crate::connection::{ConnectionLimits, Connections, Phase};
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
    /// With a key, the `/v1` routes need `Authorization: Bearer KEY`. An empty (or
    /// all-blank) key is no key: the routes are open.
    pub api_key: Option<String>,
    /// Largest request body: a larger declared `Content-Length` is answered 413 before the
    /// body is read; a chunked body is cut at the limit with 413.
    pub max_body_bytes: usize,
    /// Time to receive a request's line and headers, from its first byte or from the end
    /// of the previous response (so also the longest idle keep-alive). Past it: 408 when
    /// part of a request arrived, else the connection is closed.
    pub header_read_timeout: Duration,
    /// Time to receive a request's body once its headers are in (408 past it).
    pub body_read_timeout: Duration,
    /// Longest a response may wait between two successive writes to the socket, as
    /// nginx's `send_timeout`: a client that stops reading is cut once the socket's send
    /// buffer has stayed full this long.
    pub send_timeout: Duration,
    /// Most connections open at once; further clients wait in the listen backlog until
    /// one closes. Bounds the file descriptors the server holds.
    pub max_connections: usize,
    /// `max_tokens` of requests that give none (cut to the context).
    pub default_max_tokens: usize,
    /// Most stop strings per request.
    pub max_stops: usize,
    /// After a shutdown signal, running requests get this long to finish; then they end
    /// with a `shutting_down` error and every connection is closed.
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
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            max_connections: 512,
            default_max_tokens: 512,
            max_stops: 16,
            shutdown_grace: Duration::from_secs(30),
            engine: EngineConfig::default(),
        }
    }
}

/// Most connections [`ServerConfig::max_connections`] may allow.
const MAX_CONNECTIONS: usize = 1 << 20;
/// After the grace period: how long cancelled requests get to send their last event, and
/// then cut connections to close.
const FLUSH: Duration = Duration::from_secs(1);

/// A bound server: its engine running, its listener open.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
    connections: ConnectionLimits,
    max_connections: u32,
    grace: Duration,
}

impl Server {
    /// Starts the engine on `llm` and binds the address.
    pub async fn bind(llm: Llm, config: ServerConfig) -> Result<Self, ServerError> {
        config.check()?;
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
            api_key: config.api_key.clone().filter(|key| !key.trim().is_empty()),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            next_id: AtomicU64::new(0),
        });
        Ok(Self {
            app,
            listener,
            connections: ConnectionLimits {
                header_read_timeout: config.header_read_timeout,
                send_timeout: config.send_timeout,
                max_body_bytes: config.max_body_bytes,
            },
            max_connections: config.max_connections as u32,
            grace: config.shutdown_grace,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then shuts down within a bound: the listener
    /// closes; connections without a request in flight close at once (idle keep-alives,
    /// half-sent requests); running requests get the grace period to finish, then end with
    /// a `shutting_down` error (a last event in a stream); a moment later every connection
    /// left is closed and this returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let connections = Connections::new(
            http::router(self.app.clone()),
            self.connections,
            self.app.metrics.clone(),
            self.max_connections,
        );
        connections.accept_until(self.listener, shutdown).await;
        self.app.engine.drain();
        connections.set_phase(Phase::Draining);
        let all_finished = connections.wait_closed(self.grace).await;
        let app = self.app.clone();
        tokio::task::spawn_blocking(move || app.engine.stop())
            .await
            .map_err(|e| ServerError::Engine(e.to_string()))?;
        if !all_finished {
            connections.wait_closed(FLUSH).await;
            connections.set_phase(Phase::Cutting);
            connections.wait_closed(FLUSH).await;
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Refuses settings the server cannot run with.
    fn check(&self) -> Result<(), ServerError> {
        let invalid = |message: String| Err(ServerError::InvalidConfig(message));
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be above 0"));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return invalid(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}, got {}",
                self.max_connections
            ));
        }
        Ok(())
    }
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
