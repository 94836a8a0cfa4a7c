//! The llm-jp tokenizer: Hugging Face `tokenizers` with the model folder's special tokens,
//! and a streaming decoder that never splits a UTF-8 character.
//!
//! A model folder holds `tokenizer.json` and, usually, `tokenizer_config.json` (special
//! tokens, flags, the chat template) and `special_tokens_map.json`. [`Tokenizer::from_dir`]
//! reads all of them and checks that every special token they name is in the vocabulary.
//!
//! ```
//! use llmjp_tokenizer::Tokenizer;
//!
//! # fn main() -> Result<(), llmjp_tokenizer::TokenizerError> {
//! # let Some(dir) = llmjp_testdata::tokenizer_dir() else { return Ok(()) };
//! // `dir` is a model folder, e.g. ../shared/llm-jp-3-tokenizer.
//! let tokenizer = Tokenizer::from_dir(&dir)?;
//! let ids = tokenizer.encode("自然言語処理", true)?;
//! assert_eq!(ids[0], tokenizer.bos_id().unwrap());
//! assert_eq!(tokenizer.decode(&ids, true)?, "自然言語処理");
//!
//! // Stream ids as a model produces them: each chunk is whole characters.
//! let mut stream = tokenizer.stream_decoder(true);
//! let mut text = String::new();
//! for &id in &ids {
//!     if let Some(chunk) = stream.step(id)? {
//!         text.push_str(&chunk);
//!     }
//! }
//! text.extend(stream.finish()?);
//! assert_eq!(text, "自然言語処理");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod stream;

use std::path::{Path, PathBuf};

pub use config::{ChatTemplateSource, TokenizerConfig, MAX_CONFIG_BYTES, MAX_TOKENIZER_JSON_BYTES};
pub use error::{Result, TokenizerError};
pub use stream::StreamDecoder;

/// A tokenizer loaded from a model folder or a `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    unk_id: Option<u32>,
    /// Ids of the special added tokens, sorted.
    special_ids: Vec<u32>,
    /// Ids of the byte-fallback tokens (`<0x00>`..`<0xFF>`), sorted.
    byte_fallback_ids: Vec<u32>,
    /// Number of tokens, added tokens included.
    vocab_size: usize,
    /// See [`Tokenizer::max_token_bytes`].
    max_token_bytes: usize,
}

impl Tokenizer {
    /// Loads `tokenizer.json` alone: no special-token configuration, no chat template.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = load_tokenizer_json(path)?;
        Ok(Self::with_config(inner, TokenizerConfig::default()))
    }

    /// Loads a model folder: `tokenizer.json` (required), `tokenizer_config.json`,
    /// `special_tokens_map.json` and `chat_template.jinja` (each optional).
    ///
    /// Every special token the configuration names must be in the vocabulary.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let inner = load_tokenizer_json(&dir.join("tokenizer.json"))?;
        let config = TokenizerConfig::from_dir(dir)?;
        for (field, token) in &config.special_tokens {
            if inner.token_to_id(token).is_none() {
                let file = ["special_tokens_map.json", "tokenizer_config.json"]
                    .into_iter()
                    .map(|f| dir.join(f))
                    .find(|p| file_mentions(p, token))
                    .unwrap_or_else(|| dir.join("tokenizer_config.json"));
                return Err(TokenizerError::UnknownToken {
                    path: file,
                    field: field.clone(),
                    token: token.clone(),
                });
            }
        }
        Ok(Self::with_config(inner, config))
    }

    fn with_config(inner: tokenizers::Tokenizer, config: TokenizerConfig) -> Self {
        let id = |key: &str| config.token(key).and_then(|t| inner.token_to_id(t));
        let mut special_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter_map(|(id, token)| token.special.then_some(id))
            .collect();
        special_ids.sort_unstable();
        // Looked up once here: the streaming decoder asks for every generated id.
        let mut byte_fallback_ids: Vec<u32> = (0..=255u8)
            .filter_map(|b| inner.token_to_id(&format!("<0x{b:02X}>")))
            .collect();
        byte_fallback_ids.sort_unstable();
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1);
        Self {
            special_ids,
            max_token_bytes,
            byte_fallback_ids,
            vocab_size: inner.get_vocab_size(true),
            bos_id: id("bos_token"),
            eos_id: id("eos_token"),
            pad_id: id("pad_token"),
            unk_id: id("unk_token"),
            config,
            inner,
        }
    }

    /// The longest token in the vocabulary, in bytes (48 for llm-jp: sixteen `▁`). A text
    /// of `n` tokens is rarely longer than `n` times this: callers use it to refuse a
    /// prompt that cannot fit a context before spending time and memory encoding it.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Token ids of `text`. With `add_special_tokens`, the post-processor's tokens (the BOS
    /// for llm-jp) are added, as `tokenizer(text)` does in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Token ids of many texts, encoded in parallel.
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        self.inner
            .encode_batch_fast(texts.to_vec(), add_special_tokens)
            .map(|all| all.iter().map(|e| e.get_ids().to_vec()).collect())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Text of `ids`. Ids outside the vocabulary are skipped, as in transformers.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// A decoder that takes ids one at a time; see [`StreamDecoder`].
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special_tokens)
    }

    /// The token string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens, added tokens included. Model embeddings may have more rows (llm-jp:
    /// 99,574 tokens, 99,584 rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of the beginning-of-sequence token, if the configuration names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Id of the end-of-sequence token, if the configuration names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Id of the padding token, if the configuration names one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Id of the unknown token, if the configuration names one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The configuration read from the model folder.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Whether `id` is a special token (dropped by `decode(.., skip_special_tokens: true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// Whether `id` is a byte-fallback token such as `<0xE3>`.
    pub fn is_byte_fallback(&self, id: u32) -> bool {
        self.byte_fallback_ids.binary_search(&id).is_ok()
    }
}

fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = config::read_to_string(path, config::MAX_TOKENIZER_JSON_BYTES)?;
    // Parse once with serde_json first so that malformed JSON is reported as such.
    let _: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
            path: PathBuf::from(path),
            source,
        })?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| TokenizerError::InvalidTokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

fn file_mentions(path: &Path, token: &str) -> bool {
    config::read_to_string(path, config::MAX_CONFIG_BYTES)
        .is_ok_and(|text| serde_json::to_string(token).is_ok_and(|quoted| text.contains(&quoted)))
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
