//! The routes: OpenAI's endpoints, health and metrics, the API key check.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llmjp::{ChatTemplate, Tokenizer};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{
    ChatRequest, CompletionRequest, Endpoint, IntoJob, Job, Limits, Prompt, Responder, Usage,
};
use crate::engine::{Engine, Event, Request};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The engine.
    pub engine: Engine,
    /// Renders and encodes prompts (on the blocking pool, not the engine thread).
    pub encoder: Encoder,
    /// Defaults and limits.
    pub limits: Limits,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// `Authorization: Bearer` key the `/v1` routes need.
    pub api_key: Option<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time to receive a request's body.
    pub body_read_timeout: Duration,
    /// Numbers the responses' ids.
    pub next_id: AtomicU64,
}

/// The model's tokenizer and chat template, and its context.
#[derive(Debug)]
pub struct Encoder {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template.
    pub template: ChatTemplate,
    /// The model's context.
    pub context: usize,
}

impl Encoder {
    /// The prompt's ids (a chat rendered, raw text with the BOS).
    fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, ApiError> {
        let (text, special) = match prompt {
            Prompt::Chat(messages) => {
                let text = self
                    .template
                    .render(messages, true)
                    .map_err(|e| ApiError::invalid(e.to_string(), "messages"))?;
                (text, false)
            }
            Prompt::Text(text) => (text.clone(), true),
        };
        // Text far beyond what the context holds is refused before it is encoded.
        llmjp::check_prompt_text(&text, &self.tokenizer, self.context)
            .map_err(|e| ApiError::context_exceeded(e.to_string()))?;
        self.tokenizer
            .encode(&text, special)
            .map_err(|e| ApiError::invalid(e.to_string(), "prompt"))
    }
}

/// The router of every endpoint.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(app)
}

async fn authorize(State(app): State<Arc<App>>, request: HttpRequest, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same(given.as_bytes(), key.as_bytes())) {
            app.metrics.request("auth", 401);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if app.engine.is_finished() {
        let body = json!({"status": "stopped"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("models", 200);
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.limits.model,
            "object": "model",
            "created": 0,
            "owned_by": "llm-jp",
            "max_model_len": app.encoder.context,
        }],
    }))
    .into_response()
}

async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    handle::<ChatRequest>(&app, Endpoint::Chat, body).await
}

async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    handle::<CompletionRequest>(&app, Endpoint::Completions, body).await
}

/// Parses, validates and answers a request of either endpoint, and counts its status.
async fn handle<R: DeserializeOwned + IntoJob>(
    app: &Arc<App>,
    endpoint: Endpoint,
    body: Body,
) -> Response {
    let response = match parse::<R>(app, body, endpoint)
        .await
        .and_then(|r| r.into_job(&app.limits))
    {
        Ok(job) => answer(app, endpoint, job).await,
        Err(e) => Err(e),
    };
    let name = match endpoint {
        Endpoint::Chat => "chat",
        Endpoint::Completions => "completions",
    };
    finish(app, name, response)
}

fn finish(app: &App, endpoint: &'static str, response: Result<Response, ApiError>) -> Response {
    let response = response.unwrap_or_else(IntoResponse::into_response);
    app.metrics.request(endpoint, response.status().as_u16());
    response
}

/// The body as JSON of type `T`: 408 when it does not arrive in time, 413 over the size
/// limit, 400 when it is not that JSON (naming the field at fault where there is one).
async fn parse<T: DeserializeOwned>(
    app: &App,
    body: Body,
    endpoint: Endpoint,
) -> Result<T, ApiError> {
    let bytes = tokio::time::timeout(app.body_read_timeout, to_bytes(body, app.max_body_bytes))
        .await
        .map_err(|_| ApiError::read_timeout("body", app.body_read_timeout))?
        .map_err(|_| ApiError::too_large(app.max_body_bytes))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_json(format!("the body is not valid JSON: {e}")))?;
    let prompt_field = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    T::deserialize(&value).map_err(|e| {
        let param = crate::api::field_at_fault(&value, prompt_field);
        ApiError::invalid(e.to_string(), param.unwrap_or("body"))
    })
}

/// Encodes the prompt, queues the request and answers: the whole completion, or a stream.
async fn answer(app: &Arc<App>, endpoint: Endpoint, job: Job) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let encoder = app.clone();
    let prompt = job.prompt.clone();
    let ids = tokio::task::spawn_blocking(move || encoder.encoder.encode(&prompt))
        .await
        .map_err(|e| ApiError::internal(format!("encoding failed: {e}")))??;
    let context = app.encoder.context;
    if ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", "prompt"));
    }
    if ids.len() >= context {
        return Err(ApiError::context_exceeded(format!(
            "the prompt is {} tokens; the model's context is {context}",
            ids.len()
        )));
    }
    let room = context - ids.len();
    let max_tokens = match job.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::context_exceeded(format!(
                "the prompt ({} tokens) and max_tokens ({n}) exceed the model's context of {context} tokens",
                ids.len()
            )))
        }
        Some(n) => n,
        None => app.limits.default_max_tokens.min(room),
    };
    job.sampling
        .validate()
        .map_err(|e| ApiError::sampling(&e))?;
    let (events, mut received) = mpsc::unbounded_channel();
    app.engine.submit(Request {
        ids,
        max_tokens,
        sampling: job.sampling,
        penalties: job.penalties,
        stop: job.stop,
        ignore_eos: job.ignore_eos,
        arrived,
        events,
    })?;
    let responder = Responder::new(
        endpoint,
        app.next_id.fetch_add(1, Ordering::Relaxed),
        &app.limits.model,
    );
    if !job.stream {
        let mut text = String::new();
        while let Some(event) = received.recv().await {
            match event {
                Event::Text(more) => text.push_str(&more),
                Event::Done { finish, usage } => {
                    return Ok(Json(responder.complete(&text, finish, usage)).into_response())
                }
                Event::Error(e) => return Err(e),
            }
        }
        return Err(ApiError::internal("the engine dropped the request"));
    }
    // Engine events become server-sent events on a task of their own; when the client goes
    // away the stream is dropped, the task's send fails and it drops the engine's receiver,
    // which frees the sequence at the next step.
    let (chunks, out) = mpsc::channel::<SseEvent>(64);
    let include_usage = job.include_usage;
    tokio::spawn(async move {
        let data = |value: serde_json::Value| SseEvent::default().data(value.to_string());
        if endpoint == Endpoint::Chat
            && chunks
                .send(data(responder.chunk(None, true, None)))
                .await
                .is_err()
        {
            return;
        }
        let mut usage_sent: Option<Usage> = None;
        loop {
            // A client that goes away while its request waits in the queue drops it there.
            let event = tokio::select! {
                event = received.recv() => event,
                () = chunks.closed() => return,
            };
            let Some(event) = event else { break };
            let event = match event {
                Event::Text(text) => data(responder.chunk(Some(&text), false, None)),
                Event::Done { finish, usage } => {
                    usage_sent = include_usage.then_some(usage);
                    data(responder.chunk(None, false, Some(finish)))
                }
                Event::Error(e) => data(e.body()),
            };
            if chunks.send(event).await.is_err() {
                return;
            }
        }
        if let Some(usage) = usage_sent {
            if chunks
                .send(data(responder.usage_chunk(usage)))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = chunks.send(SseEvent::default().data("[DONE]")).await;
    });
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(out), Ok::<_, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
