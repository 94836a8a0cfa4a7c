//! [`ChatTemplate`]: a minijinja environment set up as transformers sets up Jinja2.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::format::{Item, StrftimeItems};
use llmjp_tokenizer::Tokenizer;
use minijinja::machinery::{
    self, CompiledTemplate, Instructions, TemplateConfig, Vm, WhitespaceConfig,
};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::bounded::{self, Exceeded, RenderLimits, DEFAULT_FUEL, MAX_NESTING};
use crate::error::{message_of, truncate_message};
use crate::{ChatError, Message, Result};

/// The official llm-jp-3 / llm-jp-3.1 instruct chat template (from the instruct4
/// `tokenizer_config.json`), for model folders whose configuration lacks one. A system
/// message's content is ignored: the template emits a fixed sentence instead.
pub const LLM_JP_TEMPLATE: &str = "{{bos_token}}{% for message in messages %}{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}{% elif message['role'] == 'system' %}{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + eos_token }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}{% endfor %}";

const TEMPLATE_NAME: &str = "chat_template";

/// Largest template source accepted (real chat templates are a few kilobytes).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

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
/// every render is bounded in instructions, memory, wall-clock time, recursion and output
/// size ([`RenderLimits`], [`with_limits`](Self::with_limits)), whatever the template does.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    program: Arc<Program>,
    special_tokens: BTreeMap<String, String>,
    limits: RenderLimits,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .field("limits", &self.limits)
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
        // Empty: every filter, test and function comes from `bounded::install`.
        let mut env = Environment::empty();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(bounded::methods::call);
        env.set_recursion_limit(128);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        bounded::install(&mut env);
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatError::TemplateTooLarge {
                limit: MAX_TEMPLATE_BYTES,
            });
        }
        let source = rewrite_generation_tags(source);
        let source: Arc<str> = bounded::unfold_numbers(&source, &whitespace())
            .map_err(|e| ChatError::Syntax {
                message: describe(&e),
            })?
            .into();
        let program = Program::new(source).map_err(|e| ChatError::Syntax {
            message: describe(&e),
        })?;
        Ok(Self {
            env: Arc::new(env),
            program: Arc::new(program),
            special_tokens,
            limits: RenderLimits::default(),
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

    /// Sets the limits of each render.
    pub fn with_limits(mut self, limits: RenderLimits) -> Self {
        Arc::make_mut(&mut self.env).set_fuel(Some(limits.fuel));
        self.limits = limits;
        self
    }

    /// Sets the instruction budget of each render.
    pub fn with_fuel(self, fuel: u64) -> Self {
        let limits = RenderLimits {
            fuel,
            ..self.limits
        };
        self.with_limits(limits)
    }

    /// Sets the largest rendered prompt, in bytes.
    pub fn with_max_output_bytes(self, max_output_bytes: usize) -> Self {
        let limits = RenderLimits {
            max_output_bytes,
            ..self.limits
        };
        self.with_limits(limits)
    }

    /// The limits of each render.
    pub fn limits(&self) -> &RenderLimits {
        &self.limits
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

    /// Runs the hardened program (see [`bounded`]) under this render's budget.
    fn render_context(&self, context: &Map<String, Json>) -> Result<String> {
        let guard =
            bounded::BudgetGuard::install(self.limits.max_memory_bytes, self.limits.timeout);
        let mut text = String::new();
        let result = Vm::new(&self.env).eval(
            &self.program.root,
            Value::from_serialize(context),
            &self.program.blocks,
            &mut machinery::make_string_output(&mut text),
            AutoEscape::None,
        );
        let exceeded = guard.exceeded();
        drop(guard);
        match (result, exceeded) {
            (_, Some(Exceeded::Memory)) => Err(ChatError::MemoryLimit {
                limit: self.limits.max_memory_bytes,
            }),
            (_, Some(Exceeded::Time)) => Err(ChatError::Timeout {
                limit: self.limits.timeout,
            }),
            (_, Some(Exceeded::Nesting)) => Err(ChatError::Render {
                message: format!("values nest deeper than {MAX_NESTING} levels"),
            }),
            (Ok(_), None) if text.len() > self.limits.max_output_bytes => {
                Err(ChatError::OutputTooLarge {
                    limit: self.limits.max_output_bytes,
                })
            }
            (Ok(_), None) => Ok(text),
            (Err(e), None) => Err(self.classify(&e)),
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
            ErrorKind::OutOfFuel => ChatError::OutOfFuel {
                fuel: self.limits.fuel,
            },
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

/// A template compiled once and hardened (see [`bounded`]), with the source it borrows from.
struct Program {
    // Declared before `source`, so dropped before it: they borrow from it.
    root: Instructions<'static>,
    blocks: BTreeMap<&'static str, Instructions<'static>>,
    source: Arc<str>,
}

impl Program {
    fn new(source: Arc<str>) -> std::result::Result<Self, Error> {
        // SAFETY: the instructions borrow from the heap allocation of `source`, which does
        // not move (the Arc is only moved, never its contents), is never mutated, and lives
        // in the same struct, dropped after them (field order). The `'static` never leaves
        // this struct: `Vm::eval` borrows the instructions for the duration of one render.
        let text: &'static str = unsafe { &*(source.as_ref() as *const str) };
        let compiled = compile(text)?;
        let root = bounded::harden(&compiled.instructions);
        let blocks = compiled
            .blocks
            .iter()
            .map(|(name, block)| (*name, bounded::harden(block)))
            .collect();
        Ok(Self {
            root,
            blocks,
            source,
        })
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("source_bytes", &self.source.len())
            .field("instructions", &self.root.len())
            .finish()
    }
}

/// Parses and compiles `source` with transformers' Jinja settings.
fn compile(source: &str) -> std::result::Result<CompiledTemplate<'_>, Error> {
    let config = TemplateConfig {
        syntax_config: Default::default(),
        ws_config: whitespace(),
        default_auto_escape: Arc::new(|_| AutoEscape::None),
    };
    CompiledTemplate::new(TEMPLATE_NAME, source, &config)
}

/// transformers' Jinja whitespace settings: `trim_blocks`, `lstrip_blocks`.
fn whitespace() -> WhitespaceConfig {
    WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    }
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

/// `raise_exception(message)`: fails the render with the message, cut to
/// [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES) (printing a huge value stops there).
fn raise_exception(message: Value) -> std::result::Result<Value, Error> {
    let message = match message.as_str() {
        Some(text) => message_of(&text),
        None => message_of(&message),
    };
    Err(
        Error::new(ErrorKind::InvalidOperation, "raise_exception called")
            .with_source(RaisedException(message)),
    )
}

/// `strftime_now(format)`: the local time, formatted within what is left of the render's
/// budget (a long format can make text many times its own length).
fn strftime_now(format: &str) -> std::result::Result<String, Error> {
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        ));
    }
    let mut out = bounded::CappedString::within_budget();
    chrono::Local::now()
        .format_with_items(StrftimeItems::new(format))
        .write_to(&mut out)
        .map_err(|_| bounded::budget::memory_exceeded())?;
    Ok(out.text)
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

/// minijinja's description of `error`, cut to [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES):
/// it may quote template values.
fn describe(error: &Error) -> String {
    let mut message = message_of(error);
    if let Some(detail) = error.detail() {
        if !message.contains(detail) {
            message = format!("{message}: {}", message_of(&detail));
        }
    }
    truncate_message(message)
}
