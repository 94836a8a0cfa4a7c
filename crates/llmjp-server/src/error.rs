//! Errors: [`ServerError`] for starting the server, [`ApiError`] for what a request gets
//! back, as OpenAI's error object.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model could not be loaded or used.
    #[error(transparent)]
    Llm(#[from] llmjp::LlmError),
    /// The address could not be bound, or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid server setting: {0}")]
    InvalidConfig(String),
    /// The engine thread ended unexpectedly.
    #[error("the engine stopped: {0}")]
    Engine(String),
}

/// An error answered to a request: an HTTP status and OpenAI's
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A sentence for people.
    pub message: String,
    /// OpenAI's error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a field has a bad value.
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400: the body is not the JSON the endpoint takes.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self {
            code: Some("invalid_json"),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404: the request names another model.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model `{model}` does not exist on this server"),
            )
        }
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no endpoint {path}"),
        )
    }

    /// 405: the route takes another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this endpoint does not take that method",
        )
    }

    /// 400: the prompt (with `max_tokens`) does not fit in the context.
    pub fn context_exceeded(message: impl Into<String>) -> Self {
        Self {
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is over {limit} bytes"),
            )
        }
    }

    /// 401: no or a wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "a valid API key is needed: Authorization: Bearer KEY",
            )
        }
    }

    /// 429: the queue is full.
    pub fn queue_full(queued: usize) -> Self {
        Self {
            code: Some("queue_full"),
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the server is busy: {queued} requests are waiting; retry later"),
            )
        }
    }

    /// 503: the server is shutting down.
    pub fn shutting_down() -> Self {
        Self {
            code: Some("shutting_down"),
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )
        }
    }

    /// 408: the request ran past the server's time limit.
    pub fn timeout(limit: Duration) -> Self {
        Self {
            code: Some("timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                format!(
                    "the request ran past the limit of {} s",
                    limit.as_secs_f64()
                ),
            )
        }
    }

    /// 408: the request's `part` (headers, body) did not arrive within `limit`.
    pub fn read_timeout(part: &str, limit: Duration) -> Self {
        Self {
            code: Some("request_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                format!(
                    "the request's {part} did not arrive within {} s",
                    limit.as_secs_f64()
                ),
            )
        }
    }

    /// 400 for a sampling parameter the sampler refuses, naming the request field; 500
    /// for what is the model's fault (non-finite logits).
    pub fn sampling(error: &llmjp::crates::sampler::SamplerError) -> Self {
        use llmjp::crates::sampler::SamplerError;
        let param = match error {
            SamplerError::Temperature(_) => "temperature",
            SamplerError::TopP(_) => "top_p",
            SamplerError::TopK(_) => "top_k",
            SamplerError::MinP(_) => "min_p",
            SamplerError::RepetitionPenalty(_) => "repetition_penalty",
            _ => return Self::internal(error.to_string()),
        };
        Self::invalid(error.to_string(), param)
    }

    /// 500: the model failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error object.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            let seconds = HeaderValue::from(after.as_secs().max(1));
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}
