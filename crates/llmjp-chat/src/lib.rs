//! Chat templates as Hugging Face transformers renders them, on minijinja.
//!
//! [`ChatTemplate`] renders exactly what `tokenizer.apply_chat_template(messages,
//! tokenize=False, ...)` renders: the same context (`messages`, `tools`, `documents`,
//! `add_generation_prompt`, the special tokens), the same Jinja settings and helpers.
//! Templates are untrusted input: each render is bounded, and every failure is a typed
//! [`ChatError`] carrying the template's message.
//!
//! # Limits of a render
//!
//! Every render runs under [`RenderLimits`] (defaults in brackets):
//!
//! - **memory** ([`DEFAULT_MAX_MEMORY_BYTES`], 64 MiB): the bytes of every string, list
//!   and map the render makes, counted cumulatively before each is made: strings by
//!   length, lists and maps at 32 bytes an item. Every filter, test, function and Python
//!   method is a wrapper that charges what the call will make, per item inside `map`,
//!   `select`, `reject`, `selectattr` and `rejectattr`; only these wrapped built-ins exist
//!   (no `wordwrap`, `urlize` or `center`). See [`RenderLimits::max_memory_bytes`] for the
//!   exact accounting. Exceeding it: [`ChatError::MemoryLimit`];
//! - **instructions** ([`DEFAULT_FUEL`], 5,000,000 minijinja instructions):
//!   [`ChatError::OutOfFuel`];
//! - **time** ([`DEFAULT_TIMEOUT`], 2 s of wall clock, checked before every call, every
//!   loop iteration, every 32 instructions and inside long built-in loops; comparisons
//!   of two lists or maps (`==`, `!=`, `<`, `<=`, `>`, `>=`) and the filters `sort`,
//!   `dictsort`, `unique`, `min` and `max`, which minijinja runs without a check, are
//!   refused up front when they could compare more than 1 GiB):
//!   [`ChatError::Timeout`];
//! - **output** ([`DEFAULT_MAX_OUTPUT_BYTES`], 16 MiB of rendered prompt):
//!   [`ChatError::OutputTooLarge`];
//! - **recursion** (128 nested macro or loop calls) and **nesting** (lists and maps 64
//!   deep): [`ChatError::Render`];
//! - **messages**: text a template puts into an error (its `raise_exception` message, or
//!   minijinja's description of a failure, which may quote template values) is cut to
//!   [`MAX_MESSAGE_BYTES`] (1 KiB) on a character boundary, ending `… (truncated)`.
//!
//! Template sources are limited to [`MAX_TEMPLATE_BYTES`] (1 MiB).
//!
//! ```
//! use llmjp_chat::{ChatTemplate, Message};
//!
//! let template = ChatTemplate::llm_jp();
//! let messages = [
//!     Message::system("以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"),
//!     Message::user("自然言語処理とは何か"),
//! ];
//! let prompt = template.render(&messages, true)?;
//! assert_eq!(
//!     prompt,
//!     "<s>以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\
//!      \n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n"
//! );
//! # Ok::<(), llmjp_chat::ChatError>(())
//! ```
//!
//! With a tokenizer folder, [`ChatTemplate::from_tokenizer`] takes the folder's template and
//! special tokens, and [`encode_chat`] renders and encodes in one step without adding a
//! second BOS.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bounded;
mod error;
mod message;
mod pyjson;
mod template;

pub use bounded::{
    RenderLimits, DEFAULT_FUEL, DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT,
};
pub use error::{ChatError, Result, MAX_MESSAGE_BYTES};
pub use message::Message;
pub use template::{encode_chat, ChatTemplate, RenderOptions, LLM_JP_TEMPLATE, MAX_TEMPLATE_BYTES};

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
