/// Everything that can go wrong compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not parse.
    #[error("chat template syntax error: {message}")]
    Syntax {
        /// What is wrong, in words.
        message: String,
    },
    /// The template source is larger than
    /// [`MAX_TEMPLATE_BYTES`](crate::MAX_TEMPLATE_BYTES).
    #[error("chat template is larger than {limit} bytes")]
    TemplateTooLarge {
        /// The limit, in bytes or time.
        limit: usize,
    },
    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {message}")]
    Raised {
        /// What is wrong, in words.
        message: String,
    },
    /// Rendering used up its instruction budget (see [`ChatTemplate::with_fuel`](crate::ChatTemplate::with_fuel)).
    #[error("chat template ran out of fuel after {fuel} instructions")]
    OutOfFuel {
        /// The instruction budget that ran out.
        fuel: u64,
    },
    /// Rendering produced more text than allowed (see
    /// [`ChatTemplate::with_max_output_bytes`](crate::ChatTemplate::with_max_output_bytes)).
    #[error("chat template output exceeds {limit} bytes")]
    OutputTooLarge {
        /// The limit, in bytes or time.
        limit: usize,
    },
    /// Rendering would have created more than its memory budget (see
    /// [`RenderLimits::max_memory_bytes`](crate::RenderLimits::max_memory_bytes)).
    #[error("chat template needs more than its memory budget of {limit} bytes")]
    MemoryLimit {
        /// The limit, in bytes or time.
        limit: usize,
    },
    /// Rendering took longer than its time budget (see
    /// [`RenderLimits::timeout`](crate::RenderLimits::timeout)).
    #[error("chat template did not finish within its time budget of {limit:?}")]
    Timeout {
        /// The limit, in bytes or time.
        limit: std::time::Duration,
    },
    /// Any other failure while rendering (undefined attribute, bad filter argument, …).
    #[error("chat template failed to render: {message}")]
    Render {
        /// What is wrong, in words.
        message: String,
    },
    /// The model folder has no chat template and none was given.
    #[error("no chat template: the tokenizer configuration has none{}", name.as_ref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    NoTemplate {
        /// The template's name, if one was asked for.
        name: Option<String>,
    },
    /// The messages or options cannot be turned into template values.
    #[error("invalid chat input: {0}")]
    InvalidInput(String),
    /// Encoding the rendered prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] llmjp_tokenizer::TokenizerError),
}

/// The result of chat template operations.
pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// Longest message a template can put into a [`ChatError`] (its own `raise_exception`
/// text, or minijinja's description of a failure, which may quote template values).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What ends a message cut at [`MAX_MESSAGE_BYTES`].
const ELLIPSIS: &str = "… (truncated)";

/// `message`, cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary, with a marker
/// when something was cut.
pub(crate) fn truncate_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - ELLIPSIS.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(ELLIPSIS);
    message
}

/// `value` printed, cut as [`truncate_message`] cuts: printing stops once the message is
/// long enough, however large the value.
pub(crate) fn message_of(value: &impl std::fmt::Display) -> String {
    use std::fmt::Write as _;
    struct Prefix(String);
    impl std::fmt::Write for Prefix {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = (MAX_MESSAGE_BYTES + 1).saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            // One byte past the limit (or a cut character) marks the message as cut.
            self.0.push_str(
                &s[end..]
                    .chars()
                    .next()
                    .map(String::from)
                    .unwrap_or_default(),
            );
            Err(std::fmt::Error)
        }
    }
    let mut prefix = Prefix(String::new());
    let _ = write!(prefix, "{value}");
    truncate_message(prefix.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let cut = truncate_message(long.clone());
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with(ELLIPSIS));
        assert_eq!(message_of(&long), cut);
        assert_eq!(truncate_message("short".into()), "short");
        assert_eq!(
            message_of(&"x".repeat(MAX_MESSAGE_BYTES)),
            "x".repeat(MAX_MESSAGE_BYTES)
        );
    }
}
