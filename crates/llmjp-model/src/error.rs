/// Everything that can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the config or the weights failed.
    #[error(transparent)]
    Weights(#[from] llmjp_weights::WeightsError),
    /// The sequence would not fit: the KV cache or the model's context is full.
    #[error("the sequence needs {needed} positions but only {limit} fit ({reason})")]
    ContextOverflow {
        /// Positions needed.
        needed: usize,
        /// Positions available.
        limit: usize,
        /// Which limit applies.
        reason: &'static str,
    },
    /// A token id past the embedding table.
    #[error("token id {id} is outside the model's vocabulary of {vocab_size}")]
    InvalidToken {
        /// The token id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A forward pass was asked for no tokens.
    #[error("no input tokens")]
    EmptyInput,
    /// An unknown compute dtype name.
    #[error("unknown dtype {0:?}: expected f32, f16, bf16, q8_0 or q4_0")]
    UnknownDtype(String),
    /// The requested device cannot be used.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// A KV cache made by a model of another shape, dtype or path was passed in.
    #[error("this KV cache was made for another model ({0}); make one with new_cache")]
    CacheMismatch(String),
    /// The CPU instruction set asked for (`LLMJP_CPU_ISA`) is unknown or not on this CPU.
    #[error("{0}")]
    InvalidIsa(String),
    /// Quantized weights that do not fit their format (sizes, dtypes, a tensor that cannot
    /// be quantized).
    #[error("invalid quantized weights: {0}")]
    InvalidQuantized(String),
    /// Reading a result back from the device failed.
    #[error("reading a tensor back from the device failed: {0}")]
    Readback(String),
}

/// The result of model operations.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
