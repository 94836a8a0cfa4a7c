/// Everything that can go wrong loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    /// Loading or running the tokenizer failed.
    Tokenizer(#[from] llmjp_tokenizer::TokenizerError),
    #[error(transparent)]
    /// Rendering the chat template failed.
    Chat(#[from] llmjp_chat::ChatError),
    #[error(transparent)]
    /// Finding or reading the model files failed.
    Weights(#[from] llmjp_weights::WeightsError),
    #[error(transparent)]
    /// Building or running the model failed.
    Model(#[from] llmjp_model::ModelError),
    #[error("invalid sampling parameters: {0}")]
    /// The sampling parameters are invalid.
    Sampler(#[from] llmjp_sampler::SamplerError),
    /// The model produced NaN or infinite logits: its weights or configuration are broken
    /// (or a computation overflowed). Generation stops rather than emit garbage.
    #[error("generation stopped at step {step}: the model produced a non-finite logit ({value}) for token {token}, so its weights or configuration are broken")]
    NonFiniteLogits {
        /// Tokens generated before.
        step: usize,
        /// The first token whose logit is not finite.
        token: usize,
        /// Its logit.
        value: f32,
    },
    /// The prompt alone does not fit in the model's context.
    #[error("the prompt has {tokens} tokens but the model's context holds {limit}")]
    PromptTooLong {
        /// The prompt's tokens.
        tokens: usize,
        /// The most that fit.
        limit: usize,
    },
    /// The prompt text is so long that it cannot fit the context whatever it encodes to
    /// (refused before encoding).
    #[error("the prompt is {bytes} bytes long, more than a context of {context} tokens can hold (at most {limit} bytes are encoded)")]
    PromptTextTooLong {
        /// The prompt's length in bytes.
        bytes: usize,
        /// The most that fit.
        limit: usize,
        /// The model's context, in tokens.
        context: usize,
    },
    /// The prompt encodes to no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A device string that is not `cpu`, `cuda` or `cuda:N`, or a device this build or
    /// machine cannot use.
    #[error("{0}")]
    Device(String),
    /// A generation option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// The result of loading and generating.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;
