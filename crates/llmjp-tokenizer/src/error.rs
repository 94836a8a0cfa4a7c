use std::path::PathBuf;

/// Everything that can go wrong loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file the tokenizer needs does not exist.
    #[error("{}: file not found", path.display())]
    NotFound {
        /// The file concerned.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Something other than a regular file (a folder, a FIFO, a device) is where a file
    /// should be.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The file concerned.
        path: PathBuf,
    },
    /// A file is larger than we read for its kind.
    #[error("{}: larger than the limit of {limit} bytes for this file", path.display())]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A JSON file is not valid JSON, or not of the expected shape.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// `tokenizer.json` is valid JSON that `tokenizers` cannot load.
    #[error("{}: not a valid tokenizer: {message}", path.display())]
    InvalidTokenizer {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        message: String,
    },
    /// A configuration file names a special token that is not in the vocabulary.
    #[error("{}: {field} is {token:?}, which is not in the vocabulary", path.display())]
    UnknownToken {
        /// The file concerned.
        path: PathBuf,
        /// The configuration key naming it (`bos_token`, …).
        field: String,
        /// The token text.
        token: String,
    },
    /// Encoding failed inside `tokenizers`.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Decoding failed inside `tokenizers`.
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// The result of tokenizer operations.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
