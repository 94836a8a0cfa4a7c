use serde::{Deserialize, Serialize};

/// One chat message, as `apply_chat_template` takes it: `{"role": ..., "content": ...}`.
///
/// Templates that read more fields (tool calls, reasoning) take arbitrary JSON through
/// [`ChatTemplate::render_json`](crate::ChatTemplate::render_json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message (llm-jp's template replaces its content with a fixed sentence).
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant message (an earlier answer).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}
