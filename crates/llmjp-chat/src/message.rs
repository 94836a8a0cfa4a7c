use serde::{Deserialize, Serialize};

/// One chat message, as `apply_chat_template` takes it: `{"role": ..., "content": ...}`.
///
/// Templates that read more fields (tool calls, reasoning) take arbitrary JSON through
/// [`ChatTemplate::render_json`](crate::ChatTemplate::render_json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}
