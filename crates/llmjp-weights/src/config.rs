//! `config.json` and `generation_config.json`, in both the Hub style (`rope_theta`,
//! `torch_dtype`) and the transformers 5 style (`rope_parameters`, `dtype`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::kquant::KQuantMix;
use crate::quant::BlockFormat;
use crate::{read_json, Result, WeightsError};

/// The decoder families we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`: llm-jp-3.1 1.8b and 13b.
    Llama,
    /// `MixtralForCausalLM`: llm-jp-3.1 8x13b.
    Mixtral,
}

/// The settings of a Llama or Mixtral checkpoint that the model needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Llama or Mixtral.
    pub architecture: Architecture,
    /// Tokens in the vocabulary (rows of the embedding and the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP (of each expert for Mixtral).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Equal to `num_attention_heads` without grouped-query attention.
    pub num_key_value_heads: usize,
    /// Width of one head (`hidden_size / num_attention_heads` unless given).
    pub head_dim: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f64,
    /// Base of the RoPE frequencies.
    pub rope_theta: f64,
    /// The context length, in tokens.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// Mixtral: number of experts per layer.
    pub num_local_experts: usize,
    /// Mixtral: experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// The dtype the weights were trained and stored in (`torch_dtype` / `dtype`), if given.
    pub dtype: Option<String>,
    /// Beginning-of-sequence id, if given.
    pub bos_token_id: Option<u32>,
    /// Ids that end generation (one or several).
    pub eos_token_ids: Vec<u32>,
    /// The block format of a quantized checkpoint (`quantization_config` with
    /// `"quant_method": "llmjp"`, as `llmjp quantize` writes it), if it is one.
    pub quantization: Option<BlockFormat>,
    /// The K-quant mix of a checkpoint `llmjp quantize --format q4_k_m|q5_k_m|q6_k` wrote
    /// (its matrices' formats are in the shards, see [`Checkpoint::kquant`](crate::Checkpoint::kquant)).
    pub kquant_mix: Option<KQuantMix>,
}

/// What a `quantization_config` of our own names.
enum Quantization {
    Block(BlockFormat),
    KMix(KQuantMix),
}

/// The `quant_method` of the checkpoints `llmjp quantize` writes.
pub const QUANT_METHOD: &str = "llmjp";

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    quantization_config: Option<Value>,
}

/// The format a `quantization_config` names: only our own (`quant_method` "llmjp",
/// `format` q8_0 or q4_0 with `group_size` 32, or a K-quant mix with 256); other methods
/// (gptq, awq, …) are errors.
fn quantization_format(q: &Value) -> std::result::Result<Quantization, String> {
    let field = |key: &str| q.get(key).and_then(Value::as_str).unwrap_or("");
    let method = field("quant_method");
    if method != QUANT_METHOD {
        return Err(format!(
            "quantization_config.quant_method {method:?} is not supported (only \"{QUANT_METHOD}\", \
             written by `llmjp quantize`)"
        ));
    }
    let name = field("format");
    let group = q.get("group_size").and_then(Value::as_u64);
    if let Some(mix) = KQuantMix::from_name(name) {
        return match group {
            None | Some(256) => Ok(Quantization::KMix(mix)),
            Some(other) => Err(format!(
                "quantization_config.group_size {other} is not supported: {mix} has super-blocks of 256"
            )),
        };
    }
    let format = BlockFormat::from_name(name).ok_or_else(|| {
        format!(
            "quantization_config.format {name:?} is unknown: expected q8_0, q4_0, q4_k_m, q5_k_m or q6_k"
        )
    })?;
    match group {
        None | Some(32) => Ok(Quantization::Block(format)),
        Some(other) => Err(format!(
            "quantization_config.group_size {other} is not supported: {format} has groups of 32"
        )),
    }
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

impl ModelConfig {
    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        Self::from_json(json, path)
    }

    /// Parses the JSON of a `config.json`; `path` is used in error messages.
    pub fn from_json(json: Value, path: &Path) -> Result<Self> {
        let invalid = |message: String| WeightsError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = serde_json::from_value(json).map_err(|source| WeightsError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        let architecture = match name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MixtralForCausalLM" | "mixtral" => Architecture::Mixtral,
            _ => {
                return Err(WeightsError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    found: name,
                })
            }
        };
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(invalid(format!(
                "hidden_act {act:?} is not supported; only silu is"
            )));
        }
        if raw.attention_bias == Some(true) || raw.mlp_bias == Some(true) {
            return Err(invalid(
                "biases in attention or MLP layers are not supported".into(),
            ));
        }
        let rope_theta = rope_theta(&raw).map_err(invalid)?;
        for (field, value, max) in [
            ("vocab_size", raw.vocab_size, MAX_VOCAB),
            ("hidden_size", raw.hidden_size, MAX_WIDTH),
            ("intermediate_size", raw.intermediate_size, MAX_WIDTH * 8),
            ("num_hidden_layers", raw.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", raw.num_attention_heads, MAX_HEADS),
            (
                "num_key_value_heads",
                raw.num_key_value_heads.unwrap_or(1),
                MAX_HEADS,
            ),
            ("head_dim", raw.head_dim.unwrap_or(2), MAX_HEAD_DIM),
            (
                "max_position_embeddings",
                raw.max_position_embeddings.unwrap_or(1),
                MAX_POSITIONS,
            ),
            (
                "num_local_experts",
                raw.num_local_experts.unwrap_or(1),
                MAX_EXPERTS,
            ),
            (
                "num_experts_per_tok",
                raw.num_experts_per_tok.unwrap_or(1),
                MAX_EXPERTS,
            ),
        ] {
            if value == 0 || value > max {
                return Err(invalid(format!(
                    "{field} is {value}; it must be between 1 and {max}"
                )));
            }
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(invalid(format!(
                "rms_norm_eps is {rms_norm_eps}; it must be a positive number below 1"
            )));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if !heads.is_multiple_of(kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim is {head_dim}; it must be even and positive"
            )));
        }
        let (num_local_experts, num_experts_per_tok) = match architecture {
            Architecture::Llama => (0, 0),
            Architecture::Mixtral => {
                let experts = raw.num_local_experts.unwrap_or(8);
                let top_k = raw.num_experts_per_tok.unwrap_or(2);
                if top_k > experts {
                    return Err(invalid(format!(
                        "num_experts_per_tok ({top_k}) must not exceed num_local_experts ({experts})"
                    )));
                }
                (experts, top_k)
            }
        };
        let bos_token_id = raw.bos_token_id;
        let eos_token_ids = raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default();
        if let Some(id) = bos_token_id
            .iter()
            .chain(&eos_token_ids)
            .find(|&&id| id as usize >= raw.vocab_size)
        {
            return Err(invalid(format!(
                "token id {id} (bos_token_id or eos_token_id) is outside the vocabulary of {} tokens",
                raw.vocab_size
            )));
        }
        let (quantization, kquant_mix) = match &raw.quantization_config {
            None | Some(Value::Null) => (None, None),
            Some(q) => match quantization_format(q).map_err(invalid)? {
                Quantization::Block(format) => (Some(format), None),
                Quantization::KMix(mix) => (None, Some(mix)),
            },
        };
        Ok(Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            num_local_experts,
            num_experts_per_tok,
            dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id,
            eos_token_ids,
            quantization,
            kquant_mix,
        })
    }
}

/// Bounds on config values, far above any real model and far below what would make sizes
/// computed from them overflow or exhaust memory before a shape check could fail.
const MAX_VOCAB: usize = 1 << 22;
const MAX_WIDTH: usize = 1 << 17;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
const MAX_EXPERTS: usize = 1024;
/// Longest context a config may declare (caches grow with what a request uses, not this).
pub const MAX_POSITIONS: usize = 1 << 21;

/// `rope_theta`, from the top level (Hub style) or `rope_parameters` (transformers 5);
/// scaled RoPE variants are refused rather than silently computed wrong.
fn rope_theta(raw: &RawConfig) -> std::result::Result<f64, String> {
    // transformers reads both spellings: `rope_type`, and the older `type`.
    let check_type = |params: &Value| {
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str);
        match kind {
            None | Some("default") => Ok(()),
            Some(other) => Err(format!(
                "RoPE scaling {other:?} is not supported; only default RoPE is"
            )),
        }
    };
    if let Some(scaling) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        check_type(scaling)?;
    }
    if let Some(params) = raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
        check_type(params)?;
        if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
            if !(theta.is_finite() && theta > 1.0) {
                return Err(format!(
                    "rope_theta is {theta}; it must be a finite number above 1"
                ));
            }
            return Ok(theta);
        }
    }
    let theta = raw.rope_theta.unwrap_or(10_000.0);
    if theta.is_finite() && theta > 1.0 {
        Ok(theta)
    } else {
        Err(format!(
            "rope_theta is {theta}; it must be a finite number above 1"
        ))
    }
}

/// `generation_config.json`: stop ids and the sampling defaults the model ships with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Beginning-of-sequence id, if given.
    pub bos_token_id: Option<u32>,
    /// Ids that end generation (one or several).
    pub eos_token_ids: Vec<u32>,
    /// Padding id, if given.
    pub pad_token_id: Option<u32>,
    /// Sample (true) or decode greedily (false).
    pub do_sample: Option<bool>,
    /// Default sampling temperature.
    pub temperature: Option<f64>,
    /// Default nucleus (top-p) threshold.
    pub top_p: Option<f64>,
    /// Default top-k.
    pub top_k: Option<usize>,
    /// Default repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Default limit of generated tokens.
    pub max_new_tokens: Option<usize>,
}

#[derive(Deserialize)]
struct RawGenerationConfig {
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<u32>,
    do_sample: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    repetition_penalty: Option<f64>,
    max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Reads a `generation_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawGenerationConfig =
            serde_json::from_value(read_json(path)?).map_err(|source| WeightsError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |message: String| WeightsError::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        for (field, value, (low, high)) in [
            ("temperature", raw.temperature, (0.0, f64::MAX)),
            ("top_p", raw.top_p, (0.0, 1.0)),
            (
                "repetition_penalty",
                raw.repetition_penalty,
                (f64::MIN_POSITIVE, f64::MAX),
            ),
        ] {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v >= low && *v <= high)) {
                return Err(invalid(format!(
                    "{field} is {v}; it must be a finite number between {low} and {high}"
                )));
            }
        }
        Ok(Self {
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
            pad_token_id: raw.pad_token_id,
            do_sample: raw.do_sample,
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            repetition_penalty: raw.repetition_penalty,
            max_new_tokens: raw.max_new_tokens,
        })
    }

    /// The folder's `generation_config.json`, or the default when it has none.
    pub fn from_dir_or_default(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if crate::exists(&path) {
            Self::from_file(&path)
        } else {
            Ok(Self::default())
        }
    }
}
