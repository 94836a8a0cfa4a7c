//! The OpenAI API's request bodies, their validation into a [`Job`], and the response
//! bodies.

use llmjp::{Message, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use llmjp::FinishReason;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share (OpenAI's and the llm-jp extensions).
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    /// The model asked for; absent means the one served.
    pub model: Option<String>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Most new tokens.
    pub max_tokens: Option<i64>,
    /// Most new tokens (the newer name).
    pub max_completion_tokens: Option<i64>,
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Seed of the request's random stream.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Choices; only 1.
    pub n: Option<i64>,
    /// OpenAI's frequency penalty, on the generated tokens.
    pub frequency_penalty: Option<f64>,
    /// OpenAI's presence penalty, on the generated tokens.
    pub presence_penalty: Option<f64>,
    /// Extension: transformers' repetition penalty (over prompt and output).
    pub repetition_penalty: Option<f64>,
    /// Extension: top-k (0 or -1 turns it off).
    pub top_k: Option<i64>,
    /// Extension: min-p.
    pub min_p: Option<f64>,
    /// Extension: keep going past end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Token log-probabilities (not supported).
    pub logprobs: Option<Value>,
    /// Tools: none, or an empty list (tool calls are not supported).
    pub tools: Option<Value>,
    /// `"none"` or `"auto"` (with no tools, the same).
    pub tool_choice: Option<Value>,
    /// Token biases: none, or an empty map (not supported).
    pub logit_bias: Option<Value>,
}

/// The top-level field of a JSON request body that does not have the type its endpoint
/// takes, for the error's `param`: a sampling field by name, else `prompt_field` (the
/// endpoint's `messages` or `prompt`); `None` when the body is not an object.
pub fn field_at_fault<'a>(body: &'a Value, prompt_field: &'a str) -> Option<&'a str> {
    let fields = body.as_object()?;
    let wrong = fields.iter().find(|(name, value)| {
        let alone = Value::Object([((*name).clone(), (*value).clone())].into_iter().collect());
        name.as_str() != prompt_field && SamplingFields::deserialize(&alone).is_err()
    });
    Some(wrong.map_or(prompt_field, |(name, _)| name.as_str()))
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Everything else.
    #[serde(flatten)]
    pub fields: SamplingFields,
}

/// One message: `content` is a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text, or its parts.
    #[serde(default)]
    pub content: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The raw prompt: one string (a list of one string is accepted).
    pub prompt: Value,
    /// Everything else.
    #[serde(flatten)]
    pub fields: SamplingFields,
}

/// Server-wide defaults and limits a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The served model's name.
    pub model: String,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// Most stop strings per request.
    pub max_stops: usize,
}

/// What a request asks the engine for, before its prompt is encoded.
#[derive(Debug, Clone)]
pub struct Job {
    /// The prompt.
    pub prompt: Prompt,
    /// Most new tokens; `None` is the server default (cut to the context).
    pub max_tokens: Option<usize>,
    /// Token selection.
    pub sampling: SamplingParams,
    /// OpenAI's frequency and presence penalties (0 when not asked for).
    pub penalties: (f32, f32),
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage in a last chunk.
    pub include_usage: bool,
}

/// A prompt as the request gave it.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Messages, rendered with the chat template.
    Chat(Vec<Message>),
    /// Raw text, encoded with the BOS.
    Text(String),
}

/// A request body that asks for a [`Job`].
pub trait IntoJob {
    /// The job it asks for, checked against the server's limits.
    fn into_job(self, limits: &Limits) -> Result<Job, ApiError>;
}

impl IntoJob for ChatRequest {
    fn into_job(self, limits: &Limits) -> Result<Job, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty", "messages"));
        }
        let messages = self
            .messages
            .into_iter()
            .map(|m| Ok(Message::new(m.role, content_text(m.content)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.fields.into_job(Prompt::Chat(messages), limits)
    }
}

impl IntoJob for CompletionRequest {
    fn into_job(self, limits: &Limits) -> Result<Job, ApiError> {
        let prompt = match self.prompt {
            Value::String(text) => text,
            Value::Array(mut items) if items.len() == 1 && items[0].is_string() => {
                items.pop().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt must be a string (batches of prompts are not supported: send one request each)",
                    "prompt",
                ))
            }
        };
        self.fields.into_job(Prompt::Text(prompt), limits)
    }
}

/// The text of a message's content.
fn content_text(content: Option<Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            "only text content parts are supported",
                            "messages",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(
            "content must be a string or a list of text parts",
            "messages",
        )),
    }
}

impl SamplingFields {
    fn into_job(self, prompt: Prompt, limits: &Limits) -> Result<Job, ApiError> {
        if let Some(model) = &self.model {
            if model != &limits.model {
                return Err(ApiError::model_not_found(model));
            }
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported", "n"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| v != &Value::Bool(false) && !v.is_null())
        {
            return Err(ApiError::invalid("logprobs are not supported", "logprobs"));
        }
        if !is_empty(self.tools.as_ref()) {
            return Err(ApiError::invalid(
                "tools are not supported: this server does not call tools (send no tools, or an empty list)",
                "tools",
            ));
        }
        let tool_choice_is_none = match &self.tool_choice {
            None | Some(Value::Null) => true,
            Some(Value::String(choice)) => choice == "none" || choice == "auto",
            Some(_) => false,
        };
        if !tool_choice_is_none {
            return Err(ApiError::invalid(
                "tool_choice must be \"none\" (tool calls are not supported)",
                "tool_choice",
            ));
        }
        if !is_empty(self.logit_bias.as_ref()) {
            return Err(ApiError::invalid(
                "logit_bias is not supported (send none, or an empty object)",
                "logit_bias",
            ));
        }
        let (max_tokens_field, max_tokens) = match self.max_completion_tokens {
            Some(n) => ("max_completion_tokens", Some(n)),
            None => ("max_tokens", self.max_tokens),
        };
        let max_tokens = match max_tokens {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{max_tokens_field} must be at least 1"),
                    max_tokens_field,
                ))
            }
        };
        let mut sampling = SamplingParams::model_card();
        if let Some(t) = self.temperature {
            in_range(t, 0.0, 2.0, "temperature")?;
            sampling.temperature = t as f32;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid("top_p must be in (0, 1]", "top_p"));
            }
            sampling.top_p = p as f32;
        }
        if let Some(k) = self.top_k {
            sampling.top_k = match k {
                -1 | 0 => None,
                k if k > 0 => Some(k as usize),
                _ => {
                    return Err(ApiError::invalid(
                        "top_k must be -1, 0 or positive",
                        "top_k",
                    ))
                }
            };
        }
        if let Some(p) = self.min_p {
            in_range(p, 0.0, 1.0, "min_p")?;
            sampling.min_p = (p > 0.0).then_some(p as f32);
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r <= 10.0) {
                return Err(ApiError::invalid(
                    "repetition_penalty must be in (0, 10]",
                    "repetition_penalty",
                ));
            }
            sampling.repetition_penalty = r as f32;
        }
        let frequency = self.frequency_penalty.unwrap_or(0.0);
        in_range(frequency, -2.0, 2.0, "frequency_penalty")?;
        let presence = self.presence_penalty.unwrap_or(0.0);
        in_range(presence, -2.0, 2.0, "presence_penalty")?;
        sampling.seed = match self.seed {
            Some(seed) => seed as u64,
            None => clock_seed(),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > limits.max_stops {
            return Err(ApiError::invalid(
                format!("at most {} stop strings", limits.max_stops),
                "stop",
            ));
        }
        if stop.iter().any(|s| s.len() > 1024) {
            return Err(ApiError::invalid(
                "stop strings are at most 1024 bytes",
                "stop",
            ));
        }
        Ok(Job {
            prompt,
            max_tokens,
            sampling,
            penalties: (frequency as f32, presence as f32),
            stop,
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// Whether an optional list or map is absent, null or empty.
fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(map)) => map.is_empty(),
        Some(_) => false,
    }
}

fn in_range(value: f64, low: f64, high: f64, param: &str) -> Result<(), ApiError> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("{param} must be between {low} and {high}"),
            param,
        ))
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Seconds since the epoch, for `created`.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Which endpoint a response is for: the objects differ in names and shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// Builds one request's response bodies.
#[derive(Debug, Clone)]
pub struct Responder {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `chatcmpl-N` / `cmpl-N`.
    pub id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The model's name.
    pub model: String,
}

impl Responder {
    /// A responder for a new request numbered `n`.
    pub fn new(endpoint: Endpoint, n: u64, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-{n:016x}"),
            created: now(),
            model: model.to_owned(),
        }
    }

    /// The whole answer.
    pub fn complete(&self, text: &str, finish: FinishReason, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.openai(),
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.openai(),
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.to_json(),
        })
    }

    /// A streamed chunk: the assistant role first (chat), then text, then the finish
    /// reason with nothing more.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::openai);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(text) = text {
                    delta.insert("content".into(), text.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completions => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The last chunk of a stream asked for with `include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_json(),
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }
}
