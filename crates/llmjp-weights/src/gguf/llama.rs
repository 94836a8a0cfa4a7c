//! Llama-architecture GGUF files as Hugging Face checkpoints: the configuration from
//! llama.cpp's metadata, tensor names, and the row order of the query and key projections.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`) reorders the rows of `q_proj` and
//! `k_proj` within each head so that its RoPE can rotate adjacent pairs; Hugging Face's
//! Llama rotates the two halves of each head ("rotate half"). [`hf_row_order`] gives the
//! order that undoes it. [`expected_shape`] says which tensors a model has, and their
//! shapes, so that an import refuses the rest before copying anything.
//!
//! ```
//! use llmjp_weights::gguf::llama::{hf_name, hf_row_order, HfTensor};
//!
//! assert_eq!(hf_name("blk.3.attn_q.weight"),
//!            Some(HfTensor::Dense("model.layers.3.self_attn.q_proj.weight".into())));
//! // Two heads of width 4: GGUF keeps each head's rows as pairs (0, 2), (1, 3).
//! assert_eq!(hf_row_order(8, 2), [0, 2, 1, 3, 4, 6, 5, 7]);
//! ```

use serde_json::{json, Map, Value};

use super::{Gguf, GgufValue};
use crate::{Architecture, ModelConfig, Result, WeightsError};

/// Where a GGUF tensor goes in a Hugging Face Llama / Mixtral checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HfTensor {
    /// One tensor of that name.
    Dense(String),
    /// Every expert's matrix of one layer, stacked (`[experts, out, in]`): `w1` (gate),
    /// `w3` (up) or `w2` (down) of `model.layers.{layer}.block_sparse_moe.experts.{e}`.
    Experts {
        /// The layer.
        layer: usize,
        /// `w1`, `w2` or `w3`.
        matrix: &'static str,
    },
}

/// The Hugging Face name of a GGUF tensor of a Llama or Mixtral model, if it has one.
pub fn hf_name(gguf: &str) -> Option<HfTensor> {
    let dense = |name: String| Some(HfTensor::Dense(name));
    match gguf {
        "token_embd.weight" => return dense("model.embed_tokens.weight".into()),
        "output_norm.weight" => return dense("model.norm.weight".into()),
        "output.weight" => return dense("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = part.strip_suffix(".weight")?;
    let prefix = format!("model.layers.{layer}");
    let name = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_gate_inp" => "block_sparse_moe.gate",
        "ffn_gate_exps" => {
            return Some(HfTensor::Experts {
                layer,
                matrix: "w1",
            })
        }
        "ffn_down_exps" => {
            return Some(HfTensor::Experts {
                layer,
                matrix: "w2",
            })
        }
        "ffn_up_exps" => {
            return Some(HfTensor::Experts {
                layer,
                matrix: "w3",
            })
        }
        _ => return None,
    };
    dense(format!("{prefix}.{name}.weight"))
}

/// For each row of a Hugging Face `q_proj` / `k_proj` weight (`rows` = heads × head_dim),
/// the GGUF row that holds it (`heads`: the weight's heads, key/value heads for `k_proj`).
///
/// # Panics
///
/// When `rows` is not `heads` heads of an even, positive width: see
/// [`checked_hf_row_order`], which says so instead.
pub fn hf_row_order(rows: usize, heads: usize) -> Vec<usize> {
    checked_hf_row_order(rows, heads)
        .unwrap_or_else(|| panic!("{rows} rows are not {heads} heads of an even width"))
}

/// [`hf_row_order`], or `None` when `rows` are not `heads` (at least one) heads of an even,
/// positive width: nothing is divided before that is known.
pub fn checked_hf_row_order(rows: usize, heads: usize) -> Option<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) {
        return None;
    }
    let dim = rows / heads;
    if dim == 0 || !dim.is_multiple_of(2) {
        return None;
    }
    let half = dim / 2;
    Some(
        (0..rows)
            .map(|r| {
                let (head, within) = (r / dim, r % dim);
                head * dim + 2 * (within % half) + within / half
            })
            .collect(),
    )
}

/// The shape (PyTorch order) `config`'s model has for a Hugging Face tensor, or `None`
/// when the model has no such tensor (a layer past the last, experts in a dense model, a
/// dense MLP in a mixture).
pub fn expected_shape(config: &ModelConfig, tensor: &HfTensor) -> Option<Vec<usize>> {
    let hidden = config.hidden_size;
    let inter = config.intermediate_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mixture = config.architecture == Architecture::Mixtral;
    let experts = config.num_local_experts;
    let name = match tensor {
        HfTensor::Experts { layer, matrix } => {
            return match (*matrix, mixture && *layer < config.num_hidden_layers) {
                (_, false) => None,
                ("w2", true) => Some(vec![experts, hidden, inter]),
                (_, true) => Some(vec![experts, inter, hidden]),
            };
        }
        HfTensor::Dense(name) => name.as_str(),
    };
    match name {
        "model.embed_tokens.weight" | "lm_head.weight" => {
            return Some(vec![config.vocab_size, hidden])
        }
        "model.norm.weight" => return Some(vec![hidden]),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    if layer.parse::<usize>().ok()? >= config.num_hidden_layers {
        return None;
    }
    Some(match part {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![hidden],
        "self_attn.q_proj.weight" => vec![q, hidden],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, hidden],
        "self_attn.o_proj.weight" => vec![hidden, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" if !mixture => vec![inter, hidden],
        "mlp.down_proj.weight" if !mixture => vec![hidden, inter],
        "block_sparse_moe.gate.weight" if mixture => vec![experts, hidden],
        _ => return None,
    })
}

impl Gguf {
    /// The model's configuration, from llama.cpp's `llama.*` metadata (a model with
    /// `llama.expert_count` > 1 is a Mixtral), checked as a `config.json` is.
    pub fn model_config(&self) -> Result<ModelConfig> {
        ModelConfig::from_json(self.config_json()?, &self.path)
    }

    /// The `config.json` of the model, from llama.cpp's metadata (unchecked: see
    /// [`model_config`](Self::model_config)).
    pub fn config_json(&self) -> Result<Value> {
        let invalid = |message: String| WeightsError::InvalidConfig {
            path: self.path.clone(),
            message,
        };
        let arch = self
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .unwrap_or("");
        if arch != "llama" {
            return Err(WeightsError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: format!("GGUF architecture {arch:?}"),
            });
        }
        let number = |key: &str| {
            self.get(&format!("llama.{key}"))
                .and_then(GgufValue::as_u64)
        };
        let float = |key: &str| {
            self.get(&format!("llama.{key}"))
                .and_then(GgufValue::as_f64)
        };
        let required = |key: &str| {
            number(key).ok_or_else(|| invalid(format!("the GGUF metadata lacks llama.{key}")))
        };
        let vocab = match number("vocab_size") {
            Some(n) => n,
            None => match self.get("tokenizer.ggml.tokens") {
                Some(GgufValue::Array(tokens)) => tokens.len() as u64,
                _ => match self.tensor("token_embd.weight") {
                    Some(t) if t.dims.len() == 2 => t.dims[1],
                    _ => {
                        return Err(invalid(
                            "the vocabulary size is not in the GGUF file".into(),
                        ))
                    }
                },
            },
        };
        let experts = number("expert_count").unwrap_or(0);
        let mut config = Map::new();
        let model = if experts > 1 {
            "MixtralForCausalLM"
        } else {
            "LlamaForCausalLM"
        };
        config.insert("architectures".into(), json!([model]));
        config.insert("vocab_size".into(), json!(vocab));
        config.insert("hidden_size".into(), json!(required("embedding_length")?));
        config.insert(
            "intermediate_size".into(),
            json!(required("feed_forward_length")?),
        );
        config.insert("num_hidden_layers".into(), json!(required("block_count")?));
        config.insert(
            "num_attention_heads".into(),
            json!(required("attention.head_count")?),
        );
        let optional = [
            (
                "num_key_value_heads",
                number("attention.head_count_kv").map(Value::from),
            ),
            ("head_dim", number("attention.key_length").map(Value::from)),
            (
                "max_position_embeddings",
                number("context_length").map(Value::from),
            ),
            (
                "rms_norm_eps",
                float("attention.layer_norm_rms_epsilon").map(Value::from),
            ),
            (
                "rope_theta",
                Some(float("rope.freq_base").unwrap_or(10000.0).into()),
            ),
            (
                "bos_token_id",
                self.get("tokenizer.ggml.bos_token_id")
                    .and_then(GgufValue::as_u64)
                    .map(Value::from),
            ),
            (
                "eos_token_id",
                self.get("tokenizer.ggml.eos_token_id")
                    .and_then(GgufValue::as_u64)
                    .map(Value::from),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                config.insert(key.into(), value);
            }
        }
        if experts > 1 {
            config.insert("num_local_experts".into(), json!(experts));
            config.insert(
                "num_experts_per_tok".into(),
                json!(number("expert_used_count").unwrap_or(2)),
            );
        }
        if let Some(kind) = self
            .get("llama.rope.scaling.type")
            .and_then(GgufValue::as_str)
        {
            if kind != "none" {
                config.insert("rope_scaling".into(), json!({"type": kind}));
            }
        }
        let tied = self.tensor("output.weight").is_none();
        config.insert("tie_word_embeddings".into(), json!(tied));
        Ok(Value::Object(config))
    }
}
