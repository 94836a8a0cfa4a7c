use std::path::PathBuf;

/// Everything that can go wrong finding, reading or checking a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file the checkpoint needs does not exist.
    #[error("{}: file not found", path.display())]
    NotFound {
        /// The file concerned.
        path: PathBuf,
    },
    /// Something other than a regular file (a folder, a FIFO, a device) is where a file
    /// should be.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The file concerned.
        path: PathBuf,
    },
    /// `--model` names a file; a model folder (or a Hub id) was expected.
    #[error("{}: is a file, expected a model folder (or a Hub id of the form org/name[@revision])", path.display())]
    NotAFolder {
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
    /// A file exists but could not be read or mapped.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written (the output's path is named, not the input's).
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An output folder is the input folder, or holds one of its files under another name
    /// (a hard or symbolic link): writing it would overwrite the input.
    #[error("{}: is {} (the same file through a link or another name): refusing to write an output that shares files with its input", output.display(), input.display())]
    SharedOutput {
        /// The output's file or folder.
        output: PathBuf,
        /// The input's file or folder it is.
        input: PathBuf,
    },
    /// A JSON file (config, index) is not valid JSON or not of the expected shape.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// `config.json` parses but describes something we cannot run.
    #[error("{}: {message}", path.display())]
    InvalidConfig {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        message: String,
    },
    /// The config names an architecture other than Llama or Mixtral.
    #[error("{}: unsupported architecture {found:?}: supported are LlamaForCausalLM and MixtralForCausalLM", path.display())]
    UnsupportedArchitecture {
        /// The file concerned.
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// A safetensors file is truncated or corrupt (bad header, offsets past the end, …).
    #[error("{}: invalid safetensors file: {message}", path.display())]
    InvalidSafetensors {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        message: String,
    },
    /// A GGUF file is truncated, corrupt or not GGUF.
    #[error("{}: invalid GGUF file: {message}", path.display())]
    InvalidGguf {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        message: String,
    },
    /// Data for a block format is not a whole number of blocks.
    #[error("{len} is not a whole number of blocks of {block}")]
    NotWholeBlocks {
        /// The length given.
        len: usize,
        /// The block's length.
        block: usize,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor {name:?} is missing from the checkpoint in {}", dir.display())]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// The checkpoint folder.
        dir: PathBuf,
    },
    /// A tensor has another shape than the config implies.
    #[error("{}: tensor {name:?} has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The file concerned.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// What was found.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot convert to floats.
    #[error("{}: tensor {name:?} is stored as {dtype:?}, expected F32, F16 or BF16", path.display())]
    UnsupportedDtype {
        /// The file concerned.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The stored dtype.
        dtype: crate::Dtype,
    },
    /// `--model` is neither a folder nor a Hub id `org/name[@revision]`.
    #[error("{spec:?} is neither a model folder nor a Hub id of the form org/name[@revision]")]
    InvalidModelSpec {
        /// What was given.
        spec: String,
    },
    /// Downloading from the Hub failed.
    #[error("cannot download {file} of {repo} from the Hugging Face Hub: {message}. Without network access, pass a local model folder instead (e.g. --model ./llm-jp-3.1-1.8b-instruct4)")]
    Hub {
        /// The Hub repository.
        repo: String,
        /// The file in the repository.
        file: String,
        /// What is wrong, in words.
        message: String,
    },
    /// Offline mode and the file is not in the local Hub cache.
    #[error("{file} of {repo} is not in the Hugging Face cache ({}) and offline mode is on (HF_HUB_OFFLINE): download it first, or pass a local model folder", cache.display())]
    NotCached {
        /// The Hub repository.
        repo: String,
        /// The file in the repository.
        file: String,
        /// The Hugging Face cache folder.
        cache: PathBuf,
    },
}

impl WeightsError {
    /// A failed read of `path`: [`NotFound`](Self::NotFound) when it does not exist, else
    /// [`Io`](Self::Io).
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound {
                path: path.to_path_buf(),
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// A failed write of `path`.
    pub fn write(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The result of checkpoint operations.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;
