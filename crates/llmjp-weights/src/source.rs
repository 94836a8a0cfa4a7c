//! [`ModelSource`]: where a model is loaded from — a folder, a Hub repository or a GGUF file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::hub::{fetch, HubId, HubOptions};
use crate::{Result, WeightsError};

/// Where a model is loaded from.
///
/// ```
/// use llmjp_weights::{HubId, ModelSource};
///
/// let hub: ModelSource = "llm-jp/llm-jp-3.1-1.8b-instruct4@main".parse()?;
/// let id = HubId { repo: "llm-jp/llm-jp-3.1-1.8b-instruct4".into(), revision: Some("main".into()) };
/// assert_eq!(hub, ModelSource::Hub(id));
/// assert!("no/such folder".parse::<ModelSource>().is_err());
/// # Ok::<(), llmjp_weights::WeightsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model folder: `config.json`, safetensors weights, the tokenizer files.
    Dir(PathBuf),
    /// A Hugging Face Hub repository (at a revision, if given), fetched into the standard
    /// HF cache (offline: found there).
    Hub(HubId),
    /// A llama.cpp GGUF file, imported once into a folder of the cache (see
    /// [`crate::gguf::import::cached`]).
    Gguf(PathBuf),
}

impl ModelSource {
    /// The folder the model loads from: the folder itself (checked to be one), the Hub
    /// snapshot (fetched with `hub`), or the GGUF file's import (made once; the tokenizer
    /// taken from `tokenizer_dir` when given, `on_progress(done, total)` called as it goes).
    pub fn resolve(
        &self,
        hub: &HubOptions,
        tokenizer_dir: Option<&Path>,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<PathBuf> {
        Ok(match self {
            Self::Dir(path) => match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => path.clone(),
                Ok(_) => Err(WeightsError::NotAFolder { path: path.clone() })?,
                Err(source) => Err(WeightsError::io(path, source))?,
            },
            Self::Hub(id) => fetch(id, hub, true)?,
            Self::Gguf(path) => crate::gguf::import::cached(path, tokenizer_dir, on_progress)?,
        })
    }
}

/// As `--model` reads: a name ending in `.gguf` that is a regular file is a GGUF file, an
/// existing folder a folder, and `org/name[@revision]` a Hub id. Anything else is an error:
/// a path that exists but is neither (a plain file, or a FIFO or device named `*.gguf`), or
/// a name that is no Hub id.
impl FromStr for ModelSource {
    type Err = WeightsError;

    fn from_str(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if std::fs::symlink_metadata(path).is_ok() {
            let meta = std::fs::metadata(path).map_err(|e| WeightsError::io(path, e))?;
            let gguf = spec.ends_with(".gguf");
            return Ok(match (meta.is_dir(), meta.is_file()) {
                (true, _) => Self::Dir(path.to_path_buf()),
                (false, true) if gguf => Self::Gguf(path.to_path_buf()),
                (false, false) if gguf => Err(WeightsError::NotAFile {
                    path: path.to_path_buf(),
                })?,
                _ => Err(WeightsError::NotAFolder {
                    path: path.to_path_buf(),
                })?,
            });
        }
        match HubId::parse(spec) {
            Some(id) => Ok(Self::Hub(id)),
            None => Err(WeightsError::InvalidModelSpec {
                spec: spec.to_string(),
            })?,
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(path) | Self::Gguf(path) => write!(f, "{}", path.display()),
            Self::Hub(HubId { repo, revision }) => match revision {
                Some(revision) => write!(f, "{repo}@{revision}"),
                None => f.write_str(repo),
            },
        }
    }
}

/// Resolves `--model` to a folder: an existing folder as it is (no network); otherwise `spec`
/// must be a Hub id, whose config, tokenizer and weights are downloaded (or, offline, found)
/// in the HF cache. A GGUF file is refused here ([`ModelSource::resolve`] imports it).
pub fn resolve_model(spec: &str, options: &HubOptions) -> Result<PathBuf> {
    resolve(spec, options, true)
}

/// Like [`resolve_model`], for the tokenizer files only (no weights are downloaded).
pub fn resolve_tokenizer(spec: &str, options: &HubOptions) -> Result<PathBuf> {
    resolve(spec, options, false)
}

fn resolve(spec: &str, options: &HubOptions, with_weights: bool) -> Result<PathBuf> {
    match spec.parse::<ModelSource>()? {
        ModelSource::Dir(path) => Ok(path),
        ModelSource::Hub(id) => fetch(&id, options, with_weights),
        ModelSource::Gguf(path) => Err(WeightsError::NotAFolder { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_by_what_they_name() {
        let dir = llmjp_testdata::fixture_dir("tiny-llmjp");
        let spec = dir.to_str().unwrap();
        assert_eq!(
            spec.parse::<ModelSource>().unwrap(),
            ModelSource::Dir(dir.clone())
        );
        let hub: ModelSource = "llm-jp/tiny@v1".parse().unwrap();
        assert_eq!(hub.to_string(), "llm-jp/tiny@v1");
        let file = dir.join("config.json");
        let err = file.to_str().unwrap().parse::<ModelSource>().unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        assert!("../up/../and/away".parse::<ModelSource>().is_err());
        let mut progress = |_, _| {};
        let missing = ModelSource::Dir(dir.join("missing"));
        let options = HubOptions::default();
        assert!(missing.resolve(&options, None, &mut progress).is_err());
        let resolved = ModelSource::Dir(dir.clone()).resolve(&options, None, &mut progress);
        assert_eq!(resolved.unwrap(), dir);
    }
}
