//! `tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja`, as
//! transformers reads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::{Result, TokenizerError};

/// The chat template(s) a model folder declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplateSource {
    /// One template (a string in `tokenizer_config.json`, or `chat_template.jinja`).
    Single(String),
    /// Named templates (a list of `{name, template}`); `"default"` is used when none is named.
    Named(BTreeMap<String, String>),
}

impl ChatTemplateSource {
    /// The template named `name`, or the default one (the single template, or the one named
    /// `"default"`) when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Option<&str> {
        match (self, name) {
            (Self::Single(t), None) => Some(t),
            (Self::Single(_), Some(_)) => None,
            (Self::Named(map), name) => map.get(name.unwrap_or("default")).map(String::as_str),
        }
    }
}

/// Special tokens and flags from a model folder's tokenizer configuration files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// Named special tokens by their config key (`bos_token`, `eos_token`, `pad_token`, …),
    /// as strings; these are also what a chat template sees.
    pub special_tokens: BTreeMap<String, String>,
    /// `add_bos_token`, when the config states it.
    pub add_bos_token: Option<bool>,
    /// `add_eos_token`, when the config states it.
    pub add_eos_token: Option<bool>,
    /// The chat template(s), when the folder has any.
    pub chat_template: Option<ChatTemplateSource>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

impl TokenizerConfig {
    /// Reads the configuration files of a model folder. Each file is optional; a file that
    /// exists but is malformed is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut config = Self::default();
        if let Some(json) = read_json_if_exists(&dir.join("tokenizer_config.json"))? {
            config.merge(&json, &dir.join("tokenizer_config.json"))?;
        }
        if let Some(json) = read_json_if_exists(&dir.join("special_tokens_map.json"))? {
            config.merge(&json, &dir.join("special_tokens_map.json"))?;
        }
        let jinja = dir.join("chat_template.jinja");
        if exists(&jinja) {
            let text = read_to_string(&jinja, MAX_CONFIG_BYTES)?;
            config.chat_template = Some(ChatTemplateSource::Single(text));
        }
        Ok(config)
    }

    /// Parses the text of a `tokenizer_config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let json: Value = serde_json::from_str(text).map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::default();
        config.merge(&json, path)?;
        Ok(config)
    }

    fn merge(&mut self, json: &Value, path: &Path) -> Result<()> {
        let invalid = |source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        };
        let Value::Object(map) = json else {
            return Err(invalid(serde::de::Error::custom("expected a JSON object")));
        };
        for key in SPECIAL_TOKEN_KEYS {
            match map.get(key) {
                None | Some(Value::Null) => {}
                Some(value) => {
                    let token = match TokenField::deserialize(value).map_err(invalid)? {
                        TokenField::Text(text) | TokenField::Added { content: text } => text,
                    };
                    self.special_tokens.insert(key.to_string(), token);
                }
            }
        }
        for (key, slot) in [
            ("add_bos_token", &mut self.add_bos_token),
            ("add_eos_token", &mut self.add_eos_token),
        ] {
            if let Some(value) = map.get(key).filter(|v| !v.is_null()) {
                *slot = Some(bool::deserialize(value).map_err(invalid)?);
            }
        }
        if let Some(value) = map.get("chat_template").filter(|v| !v.is_null()) {
            self.chat_template =
                Some(match TemplateField::deserialize(value).map_err(invalid)? {
                    TemplateField::Single(t) => ChatTemplateSource::Single(t),
                    TemplateField::Named(list) => ChatTemplateSource::Named(
                        list.into_iter().map(|t| (t.name, t.template)).collect(),
                    ),
                });
        }
        Ok(())
    }

    /// The token string stored under `key` (`"bos_token"`, `"eos_token"`, …).
    pub fn token(&self, key: &str) -> Option<&str> {
        self.special_tokens.get(key).map(String::as_str)
    }
}

/// Largest `tokenizer.json` read (the llm-jp one is 6.4 MB).
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 64 << 20;
/// Largest configuration file read (`tokenizer_config.json` holds the chat templates).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub(crate) fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if !exists(path) {
        return Ok(None);
    }
    let text = read_to_string(path, MAX_CONFIG_BYTES)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether anything (file, folder, FIFO, …) is at `path`, following symbolic links.
pub(crate) fn exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Reads a regular file of at most `limit` bytes. The type and size are checked before
/// opening, so that a FIFO, a device or a folder is an error and not a hang, and a file
/// growing while read stops at the limit.
pub(crate) fn read_to_string(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => TokenizerError::NotFound {
            path: PathBuf::from(path),
        },
        _ => TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_file() {
        return Err(TokenizerError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = || TokenizerError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    if metadata.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    std::fs::File::open(path)
        .map_err(io)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| TokenizerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"),
    })
}
