//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), as the Hugging Face files that
//! describe it: `tokenizer.json`, `tokenizer_config.json` (with `tokenizer.chat_template`)
//! and `special_tokens_map.json`.
//!
//! llm-jp's tokenizer is a SentencePiece unigram model with byte fallback; llama.cpp's
//! converter stores it as a `llama` vocabulary: every piece, its score and its type. The
//! pieces and scores make the same unigram model, and the normalizer and decoder are
//! SentencePiece's (`▁` for spaces, one prefixed unless `add_space_prefix` is false), the
//! ones llm-jp's own `tokenizer.json` has, so ids are those of the original tokenizer. Other
//! vocabularies (`gpt2` BPE, …) are not read: their files are asked for instead.

use std::path::Path;

use serde_json::{json, Value};

use super::{Gguf, GgufValue};
use crate::writer::write_json;
use crate::{Result, WeightsError};

/// GGUF token types (llama.cpp's `llama_token_type`).
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

/// Score given to unused pieces (llama.cpp's padding of the vocabulary), so that the
/// unigram model never picks them.
const UNUSED_SCORE: f64 = -1e9;

/// The Hugging Face files of a GGUF's tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer: Value,
    /// `tokenizer_config.json`.
    pub config: Value,
    /// `special_tokens_map.json`.
    pub special_tokens: Value,
}

impl TokenizerFiles {
    /// The tokenizer `gguf` carries: `None` when it has no vocabulary; an error when it
    /// has one this crate does not read, or one that is inconsistent (lengths, ids).
    pub fn of(gguf: &Gguf) -> Result<Option<Self>> {
        let invalid = |message: String| WeightsError::InvalidGguf {
            path: gguf.path.clone(),
            message,
        };
        let Some(model) = gguf.get("tokenizer.ggml.model") else {
            return Ok(None);
        };
        if model.as_str() != Some("llama") {
            return Err(invalid(format!(
                "its tokenizer ({model:?}) is not a SentencePiece (`llama`) vocabulary: pass \
                 the model's tokenizer folder (--tokenizer DIR)"
            )));
        }
        let array = |key: &str| match gguf.get(key) {
            Some(GgufValue::Array(items)) => Ok(Some(items)),
            None => Ok(None),
            Some(_) => Err(invalid(format!("{key} is not an array"))),
        };
        let tokens = array("tokenizer.ggml.tokens")?
            .ok_or_else(|| invalid("tokenizer.ggml.tokens is missing".into()))?;
        let tokens: Vec<&str> = tokens
            .iter()
            .map(|t| t.as_str())
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("tokenizer.ggml.tokens holds a non-string".into()))?;
        let n = tokens.len();
        if n == 0 {
            return Err(invalid("tokenizer.ggml.tokens is empty".into()));
        }
        let numbers = |key: &str, default: f64| -> Result<Vec<f64>> {
            match array(key)? {
                None => Ok(vec![default; n]),
                Some(items) if items.len() == n => items
                    .iter()
                    .map(GgufValue::as_f64)
                    .collect::<Option<_>>()
                    .ok_or_else(|| invalid(format!("{key} holds a non-number"))),
                Some(items) => Err(invalid(format!(
                    "{key} has {} entries for {n} tokens",
                    items.len()
                ))),
            }
        };
        let scores = numbers("tokenizer.ggml.scores", 0.0)?;
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(invalid(format!(
                "tokenizer.ggml.scores[{i}] = {} is not finite",
                scores[i]
            )));
        }
        let types = numbers("tokenizer.ggml.token_type", 1.0)?;
        let id = |key: &str| -> Result<Option<usize>> {
            match gguf.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if (id as usize) < n => Ok(Some(id as usize)),
                    _ => Err(invalid(format!(
                        "{key} = {v:?} is not a token id below {n}"
                    ))),
                },
            }
        };
        let flag = |key: &str, default: bool| match gguf.get(key) {
            Some(GgufValue::Bool(b)) => *b,
            _ => default,
        };
        let unk = id("tokenizer.ggml.unknown_token_id")?
            .or_else(|| types.iter().position(|&t| t as i64 == UNKNOWN))
            .unwrap_or(0);
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let add_bos = flag("tokenizer.ggml.add_bos_token", true);
        let add_eos = flag("tokenizer.ggml.add_eos_token", false);
        let space_prefix = flag("tokenizer.ggml.add_space_prefix", true);

        let vocab: Vec<Value> = tokens
            .iter()
            .zip(&scores)
            .zip(&types)
            .map(|((piece, &score), &kind)| {
                let score = if kind as i64 == UNUSED {
                    UNUSED_SCORE
                } else {
                    score
                };
                json!([piece, score])
            })
            .collect();
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &kind))| matches!(kind as i64, UNKNOWN | CONTROL | USER_DEFINED))
            .map(|(i, (piece, &kind))| {
                json!({
                    "id": i, "content": piece, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": kind as i64 != USER_DEFINED,
                })
            })
            .collect();
        let mut normalizers = vec![];
        let mut decoders = vec![
            json!({"type": "ByteFallback"}),
            replace("▁", " "),
            json!({"type": "Fuse"}),
        ];
        if space_prefix {
            normalizers.push(replace("(?<!\n)^", "▁"));
            decoders.push(replace("(?<!\n)^ ", ""));
        }
        normalizers.push(replace(" ", "▁"));
        let special = |id: Option<usize>| id.map(|i| tokens[i]);
        let processor = post_processor(
            special(bos).filter(|_| add_bos).zip(bos),
            special(eos).filter(|_| add_eos).zip(eos),
        );
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": processor,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "Unigram", "unk_id": unk, "vocab": vocab, "byte_fallback": true},
        });
        let mut special_tokens = json!({ "unk_token": tokens[unk] });
        for (key, id) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
            if let Some(token) = special(id) {
                special_tokens[key] = json!(token);
            }
        }
        let mut config = special_tokens.clone();
        config["add_bos_token"] = json!(add_bos);
        config["add_eos_token"] = json!(add_eos);
        config["clean_up_tokenization_spaces"] = json!(false);
        config["tokenizer_class"] = json!("PreTrainedTokenizerFast");
        if let Some(template) = gguf.get("tokenizer.chat_template") {
            let text = template
                .as_str()
                .ok_or_else(|| invalid("tokenizer.chat_template is not a string".into()))?;
            config["chat_template"] = json!(text);
        }
        Ok(Some(Self {
            tokenizer,
            config,
            special_tokens,
        }))
    }

    /// [`of`](Self::of), checked against the model it comes with: its vocabulary must have
    /// exactly `vocab_size` tokens (llama.cpp's converter pads it to the embedding's rows).
    /// Fewer would leave ids the model can produce that decode to nothing; more, ids past
    /// the embedding table.
    pub fn for_model(gguf: &Gguf, vocab_size: usize) -> Result<Option<Self>> {
        let Some(files) = Self::of(gguf)? else {
            return Ok(None);
        };
        let tokens = files.tokenizer["model"]["vocab"]
            .as_array()
            .map_or(0, Vec::len);
        if tokens != vocab_size {
            let consequence = if tokens < vocab_size {
                "ids it lacks would decode to nothing"
            } else {
                "its ids would index past the embedding table"
            };
            return Err(WeightsError::InvalidGguf {
                path: gguf.path.clone(),
                message: format!(
                    "its tokenizer has {tokens} tokens for a model of {vocab_size} ({consequence}): \
                     pass the model's tokenizer folder (--tokenizer DIR)"
                ),
            });
        }
        Ok(Some(files))
    }

    /// Writes the three files into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join("tokenizer.json"), &self.tokenizer)?;
        write_json(&dir.join("tokenizer_config.json"), &self.config)?;
        write_json(&dir.join("special_tokens_map.json"), &self.special_tokens)
    }
}

/// A `Replace` normalizer or decoder of a regex by `content`.
fn replace(pattern: &str, content: &str) -> Value {
    json!({"type": "Replace", "pattern": {"Regex": pattern}, "content": content})
}

/// SentencePiece's template: BOS and EOS around a sequence, each only when added.
fn post_processor(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Value {
    let mut single = vec![];
    let mut pair = vec![];
    let mut specials = serde_json::Map::new();
    let mut piece = |token: Option<(&str, usize)>, into: &mut Vec<Value>| {
        if let Some((token, id)) = token {
            into.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
            specials.insert(
                token.to_string(),
                json!({"id": token, "ids": [id], "tokens": [token]}),
            );
        }
    };
    piece(bos, &mut single);
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    piece(eos, &mut single);
    piece(bos, &mut pair);
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    piece(eos, &mut pair);
    piece(bos, &mut pair);
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    piece(eos, &mut pair);
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": specials,
    })
}
