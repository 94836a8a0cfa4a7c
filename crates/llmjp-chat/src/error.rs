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
