//! [`ChatTemplate`]: a minijinja environment set up as transformers sets up Jinja2.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use chrono::format::{Item, StrftimeItems};
use llmjp_tokenizer::Tokenizer;
use minijinja::value::Rest;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::{pyjson, ChatError, Message, Result};

/// The official llm-jp-3 / llm-jp-3.1 instruct chat template (from the instruct4
/// `tokenizer_config.json`), for model folders whose configuration lacks one. A system
/// message's content is ignored: the template emits a fixed sentence instead.
pub const LLM_JP_TEMPLATE: &str = "{{bos_token}}{% for message in messages %}{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}{% elif message['role'] == 'system' %}{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + eos_token }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}{% endfor %}";

/// Default instruction budget of one render: far above what real templates use for long
/// conversations, far below what it takes to hang a process.
pub const DEFAULT_FUEL: u64 = 5_000_000;

/// Default limit on the size of a rendered prompt.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 << 20;

const TEMPLATE_NAME: &str = "chat_template";

/// What [`ChatTemplate::render_json`] passes to the template besides the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// Append the header that starts the assistant's answer.
    pub add_generation_prompt: bool,
    /// Tool JSON schemas (`tools`); `None` renders as Jinja's `none`, as in transformers.
    pub tools: Option<Vec<Json>>,
    /// Documents for retrieval-augmented templates (`documents`).
    pub documents: Option<Vec<Json>>,
    /// Further template variables (`date_string`, `enable_thinking`, …); they override the
    /// special tokens of the same name.
    pub extra: Map<String, Json>,
}

impl RenderOptions {
    /// Options with only `add_generation_prompt` set.
    pub fn generation_prompt(add_generation_prompt: bool) -> Self {
        Self {
            add_generation_prompt,
            ..Self::default()
        }
    }
}

/// A compiled chat template with the special tokens it renders with.
///
/// Rendering follows transformers' `apply_chat_template`: Jinja2 with `trim_blocks` and
/// `lstrip_blocks`, loop controls, Python string methods, `raise_exception`,
/// `strftime_now`, and `tojson` as `json.dumps(ensure_ascii=False)`. Templates are untrusted:
/// every render is bounded in instructions ([`with_fuel`](Self::with_fuel)), recursion and
/// output size ([`with_max_output_bytes`](Self::with_max_output_bytes)).
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    special_tokens: BTreeMap<String, String>,
    fuel: u64,
    max_output_bytes: usize,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatTemplate {
    /// Compiles `source`. `special_tokens` maps names such as `bos_token` and `eos_token` to
    /// their text; each becomes a template variable.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_recursion_limit(128);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", |v: &Value, args: Rest<Value>, kwargs| {
            pyjson::tojson_filter(v, &args, kwargs)
        });
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| ChatError::Syntax {
                message: describe(&e),
            })?;
        Ok(Self {
            env: Arc::new(env),
            special_tokens,
            fuel: DEFAULT_FUEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        })
    }

    /// The built-in llm-jp instruct template with `<s>` / `</s>`.
    pub fn llm_jp() -> Self {
        let tokens = [("bos_token", "<s>"), ("eos_token", "</s>")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        Self::new(LLM_JP_TEMPLATE, tokens.into_iter().collect())
            .expect("the built-in template compiles")
    }

    /// The tokenizer folder's template (the default one, if it has several) with its special
    /// tokens; the built-in llm-jp template when the folder has none.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self> {
        let config = tokenizer.config();
        let source = match &config.chat_template {
            Some(templates) => templates.get(None).ok_or(ChatError::NoTemplate {
                name: Some("default".into()),
            })?,
            None => LLM_JP_TEMPLATE,
        };
        Self::new(source, config.special_tokens.clone())
    }

    /// The tokenizer folder's template called `name` (for configs with a list of named
    /// templates, such as `tool_use`).
    pub fn from_tokenizer_named(tokenizer: &Tokenizer, name: &str) -> Result<Self> {
        let source = tokenizer
            .config()
            .chat_template
            .as_ref()
            .and_then(|t| t.get(Some(name)))
            .ok_or_else(|| ChatError::NoTemplate {
                name: Some(name.into()),
            })?;
        Self::new(source, tokenizer.config().special_tokens.clone())
    }

    /// Sets the instruction budget of each render.
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        Arc::make_mut(&mut self.env).set_fuel(Some(fuel));
        self.fuel = fuel;
        self
    }

    /// Sets the largest rendered prompt, in bytes.
    pub fn with_max_output_bytes(mut self, limit: usize) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// The special tokens the template sees.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// Renders plain `{role, content}` messages.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages =
            serde_json::to_value(messages).map_err(|e| ChatError::InvalidInput(e.to_string()))?;
        self.render_json(
            &messages,
            &RenderOptions::generation_prompt(add_generation_prompt),
        )
    }

    /// Renders messages given as JSON (a list of objects with `role`, `content` and whatever
    /// else the template reads: `tool_calls`, `reasoning_content`, …).
    pub fn render_json(&self, messages: &Json, options: &RenderOptions) -> Result<String> {
        let Json::Array(list) = messages else {
            return Err(ChatError::InvalidInput(
                "messages must be a JSON array".into(),
            ));
        };
        if let Some(i) = list.iter().position(|m| !m.is_object()) {
            return Err(ChatError::InvalidInput(format!(
                "message {i} is not a JSON object"
            )));
        }
        if list.is_empty() {
            return Err(ChatError::InvalidInput(
                "Cannot apply chat template to an empty conversation. Provide at least one message."
                    .into(),
            ));
        }
        let messages: Vec<Json> = list.iter().map(alias_reasoning_fields).collect();

        let mut context: Map<String, Json> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect();
        context.extend(options.extra.clone());
        context.insert("messages".into(), Json::Array(messages));
        context.insert("tools".into(), to_json(&options.tools)?);
        context.insert("documents".into(), to_json(&options.documents)?);
        context.insert(
            "add_generation_prompt".into(),
            Json::Bool(options.add_generation_prompt),
        );
        self.render_context(&context)
    }

    fn render_context(&self, context: &Map<String, Json>) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added at construction");
        let mut out = BoundedWriter {
            bytes: Vec::new(),
            limit: self.max_output_bytes,
            exceeded: false,
        };
        let result = template.render_captured_to(Value::from_serialize(context), &mut out);
        match result {
            Ok(_) => String::from_utf8(out.bytes).map_err(|e| ChatError::Render {
                message: e.to_string(),
            }),
            Err(_) if out.exceeded => Err(ChatError::OutputTooLarge {
                limit: self.max_output_bytes,
            }),
            Err(e) => Err(self.classify(&e)),
        }
    }

    fn classify(&self, error: &Error) -> ChatError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(raised) = e.downcast_ref::<RaisedException>() {
                return ChatError::Raised {
                    message: raised.0.clone(),
                };
            }
            source = e.source();
        }
        match error.kind() {
            ErrorKind::OutOfFuel => ChatError::OutOfFuel { fuel: self.fuel },
            ErrorKind::SyntaxError => ChatError::Syntax {
                message: describe(error),
            },
            _ => ChatError::Render {
                message: describe(error),
            },
        }
    }
}

/// Renders `messages` with `template` and encodes the prompt with `tokenizer`, as
/// `apply_chat_template(tokenize=True)` does: the special tokens come from the template
/// (llm-jp's starts with `<s>`), so encoding adds none and the prompt never gets two BOS.
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<(String, Vec<u32>)> {
    let prompt = template.render(messages, add_generation_prompt)?;
    let ids = tokenizer.encode(&prompt, false)?;
    Ok((prompt, ids))
}

fn to_json<T: Serialize>(value: &T) -> Result<Json> {
    serde_json::to_value(value).map_err(|e| ChatError::InvalidInput(e.to_string()))
}

/// transformers copies reasoning under its other names (`thinking`, `reasoning_content`)
/// so that templates reading any of them see it.
fn alias_reasoning_fields(message: &Json) -> Json {
    const FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    let Json::Object(map) = message else {
        return message.clone();
    };
    let Some(reasoning) = FIELDS
        .iter()
        .find_map(|f| map.get(*f).filter(|v| !v.is_null()))
    else {
        return message.clone();
    };
    let mut aliased = Map::new();
    aliased.insert("thinking".into(), reasoning.clone());
    for (k, v) in map {
        aliased.insert(k.clone(), v.clone());
    }
    aliased.insert("reasoning_content".into(), reasoning.clone());
    Json::Object(aliased)
}

fn raise_exception(message: Value) -> std::result::Result<Value, Error> {
    let message = message
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| message.to_string());
    Err(
        Error::new(ErrorKind::InvalidOperation, "raise_exception called")
            .with_source(RaisedException(message)),
    )
}

fn strftime_now(format: &str) -> std::result::Result<String, Error> {
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        ));
    }
    Ok(chrono::Local::now()
        .format_with_items(items.into_iter())
        .to_string())
}

/// transformers registers a `{% generation %}…{% endgeneration %}` block that renders its
/// body unchanged (it only records where assistant text lies). minijinja has no custom
/// tags, so the block becomes `{% if true %}…{% endif %}`, whitespace control kept.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let open_dash = inner.starts_with('-');
        let close_dash = inner.ends_with('-');
        let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str(if open_dash { "{%- " } else { "{% " });
                out.push_str(r);
                out.push_str(if close_dash { " -%}" } else { " %}" });
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn describe(error: &Error) -> String {
    let mut message = error.to_string();
    if let Some(detail) = error.detail() {
        if !message.contains(detail) {
            message = format!("{message}: {detail}");
        }
    }
    message
}

/// Collects rendered output and fails once it passes the size limit.
struct BoundedWriter {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("chat template output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
