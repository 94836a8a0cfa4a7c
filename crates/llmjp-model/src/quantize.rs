//! Writing a quantized checkpoint (`llmjp quantize`): a model folder whose linear weights
//! are stored in a block format or in llama.cpp's K-quants, loaded in place
//! (memory-mapped, no re-quantization).
//!
//! Layout: safetensors shards as on the Hub; each quantized weight `X.weight` holds its
//! values (`I8 [out, in]` for Q8_0, `U8 [out, in / 2]` for Q4_0, llama.cpp's nibble order)
//! and `X.weight_scale` its f16 scales (`[out, in / 32]`); a K-quant weight holds its
//! super-blocks as GGML stores them (`U8 [out, in / 256 × block bytes]`, marked in its
//! shard's metadata, see [`CheckpointWriter::add_kquant`]); every other tensor is copied
//! as stored. `config.json` gains `"quantization_config": {"quant_method": "llmjp",
//! "format": "q8_0", "group_size": 32}` (K-quant mixes: `"q4_k_m"`, 256); the tokenizer
//! and generation files are copied.
//!
//! The K-quant mixes choose each matrix's format as `llama-quantize` does for a Llama or
//! Mixtral without an importance matrix ([`kquant_choice`]), and quantize with GGML's
//! reference quantizers byte for byte ([`llmjp_weights::kquant::quantize`]).

use std::borrow::Cow;
use std::path::Path;

use llmjp_weights::atomic::{copy_new, refuse_shared_files, TEMP_PREFIX};
use llmjp_weights::kquant::{KQuant, KQuantMix, SUPER_BLOCK};
use llmjp_weights::quant::{values_dtype, BlockFormat, BLOCK, SCALE_SUFFIX};
use llmjp_weights::writer::{write_json, CheckpointWriter};
use llmjp_weights::{read_json, Checkpoint, Dtype, Layout, ModelConfig, WeightsError};
use rayon::prelude::*;
use serde_json::json;

use crate::linear::{quant_matrix, quantization, WeightRole};
use crate::{ModelError, Result};

/// What `llmjp quantize` writes: a block format, or a K-quant mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeFormat {
    /// Every linear weight in Q8_0 or Q4_0 (as `--dtype` quantizes on load).
    Block(BlockFormat),
    /// llama.cpp's K-quant mixes (`q4_k_m`, `q5_k_m`, `q6_k`).
    KMix(KQuantMix),
}

impl QuantizeFormat {
    /// `q8_0`, `q4_0`, `q4_k_m`, `q5_k_m`, `q6_k`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Block(format) => format.name(),
            Self::KMix(mix) => mix.name(),
        }
    }
}

impl From<BlockFormat> for QuantizeFormat {
    fn from(format: BlockFormat) -> Self {
        Self::Block(format)
    }
}

impl std::fmt::Display for QuantizeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--format` name that is none of `q8_0`, `q4_0`, `q4_k_m`, `q5_k_m`, `q6_k`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: expected q8_0, q4_0, q4_k_m, q5_k_m or q6_k")]
pub struct UnknownQuantizeFormat(pub String);

impl std::str::FromStr for QuantizeFormat {
    type Err = UnknownQuantizeFormat;

    /// ```
    /// use llmjp_model::quantize::QuantizeFormat;
    /// use llmjp_weights::kquant::KQuantMix;
    /// assert_eq!("Q4_K_M".parse(), Ok(QuantizeFormat::KMix(KQuantMix::Q4KM)));
    /// assert!("q2_k".parse::<QuantizeFormat>().is_err());
    /// ```
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if let Some(mix) = KQuantMix::from_name(s) {
            return Ok(Self::KMix(mix));
        }
        s.parse::<BlockFormat>()
            .map(Self::Block)
            .map_err(|_| UnknownQuantizeFormat(s.to_owned()))
    }
}

/// How one 2-D tensor is written in a K-quant mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuantChoice {
    /// Copied as stored (MoE routers, and rows not whole blocks of 32).
    Keep,
    /// In a block format (rows not whole super-blocks; Mixtral's k and v projections).
    Block(BlockFormat),
    /// In a K-quant.
    K(KQuant),
}

/// The format `llama-quantize` gives HF tensor `name` (`[rows, cols]`) of a model with
/// `config` in `mix`, without an importance matrix: the LM head (and a tied embedding) in
/// Q6_K; the value and down projections (experts' `w2`) of the layers
/// [`KQuantMix::more_bits`] picks in Q6_K for `q4_k_m` / `q5_k_m`; with 8 experts, the key
/// and value projections in Q8_0 and (`q4_k_m`) the output projection in Q5_K; rows that are
/// not whole super-blocks in Q8_0; routers kept; the rest in the mix's base format.
pub fn kquant_choice(
    config: &ModelConfig,
    mix: KQuantMix,
    name: &str,
    cols: usize,
) -> KQuantChoice {
    let role = WeightRole::of_tensor(name);
    if role == WeightRole::Router {
        return KQuantChoice::Keep;
    }
    if !cols.is_multiple_of(SUPER_BLOCK) {
        return if cols.is_multiple_of(BLOCK) {
            KQuantChoice::Block(BlockFormat::Q8_0)
        } else {
            KQuantChoice::Keep
        };
    }
    let head =
        role == WeightRole::LmHead || (role == WeightRole::Embedding && config.tie_word_embeddings);
    if head {
        return KQuantChoice::K(KQuant::Q6K);
    }
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    let eight_experts = config.num_local_experts == 8;
    let more_bits = |layer: Option<usize>| {
        matches!(mix, KQuantMix::Q4KM | KQuantMix::Q5KM)
            && layer.is_some_and(|l| KQuantMix::more_bits(l, config.num_hidden_layers))
    };
    let base = KQuantChoice::K(mix.base());
    if name.ends_with("self_attn.v_proj.weight") {
        if eight_experts {
            return KQuantChoice::Block(BlockFormat::Q8_0);
        }
        return if more_bits(layer) {
            KQuantChoice::K(KQuant::Q6K)
        } else {
            base
        };
    }
    if name.ends_with("self_attn.k_proj.weight") && eight_experts {
        return KQuantChoice::Block(BlockFormat::Q8_0);
    }
    if name.ends_with("self_attn.o_proj.weight") && eight_experts && mix == KQuantMix::Q4KM {
        return KQuantChoice::K(KQuant::Q5K);
    }
    let down = name.ends_with("mlp.down_proj.weight") || name.ends_with(".w2.weight");
    if down && more_bits(layer) {
        return KQuantChoice::K(KQuant::Q6K);
    }
    base
}

/// What [`quantize_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedCheckpoint {
    /// Tensors quantized.
    pub quantized: usize,
    /// Tensors copied as stored (norms, MoE routers, …).
    pub copied: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Shard files written.
    pub shards: usize,
}

/// Writes the checkpoint in `src` with its linear weights quantized to `format` (a block
/// format as `--dtype q8_0|q4_0` would quantize them on load, or a K-quant mix as
/// [`kquant_choice`] picks) into the folder `out`, calling
/// `on_progress(done, total)` per tensor. `out` is created if needed and must share no
/// file with `src` ([`WeightsError::SharedOutput`] before anything is written). Every file
/// is written new and renamed into place, `config.json` last: links in `out` are replaced,
/// never written through, and a failed run leaves no half-written file.
///
/// ```no_run
/// use llmjp_model::quantize::quantize_checkpoint;
/// use llmjp_weights::quant::BlockFormat;
///
/// let report = quantize_checkpoint(
///     "llm-jp-3.1-1.8b-instruct4".as_ref(),
///     BlockFormat::Q8_0,
///     "llm-jp-3.1-1.8b-instruct4-q8_0".as_ref(),
///     &mut |done, total| eprintln!("{done}/{total}"),
/// )?;
/// println!("{} tensors quantized", report.quantized);
/// # Ok::<(), llmjp_model::ModelError>(())
/// ```
pub fn quantize_checkpoint(
    src: &Path,
    format: impl Into<QuantizeFormat>,
    out: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<QuantizedCheckpoint> {
    let format = format.into();
    let config_path = src.join("config.json");
    let config = ModelConfig::from_file(&config_path)?;
    let stored = config
        .quantization
        .map(|f| f.name())
        .or(config.kquant_mix.map(|m| m.name()));
    if let Some(stored) = stored {
        return Err(ModelError::InvalidQuantized(format!(
            "{} is already quantized ({stored})",
            src.display()
        )));
    }
    let checkpoint = Checkpoint::open(src)?;
    // Before anything is written: `out` must share no file with `src` (the same folder
    // under another name, links to the source's files, or a source made of links into
    // `out`), as writing it would replace the model being read.
    refuse_shared_files(src, out)?;
    std::fs::create_dir_all(out).map_err(|e| WeightsError::write(out, e))?;
    refuse_shared_files(src, out)?;
    let names: Vec<String> = checkpoint.names().into_iter().map(String::from).collect();
    let total = names.len();
    let (mut quantized, mut copied) = (0, 0);
    let mut writer = CheckpointWriter::new(out)?;
    for (done, name) in names.iter().enumerate() {
        let meta = checkpoint.meta(name)?;
        let choice = match (format, &meta.shape[..]) {
            (QuantizeFormat::KMix(mix), &[_, cols]) => kquant_choice(&config, mix, name, cols),
            (QuantizeFormat::Block(f), &[rows, cols]) => {
                match quantization(&checkpoint, Some(f), name, rows, cols)? {
                    Some(f) => KQuantChoice::Block(f),
                    None => KQuantChoice::Keep,
                }
            }
            _ => KQuantChoice::Keep,
        };
        match (choice, &meta.shape[..]) {
            (KQuantChoice::K(kquant), &[rows, cols]) => {
                let values = checkpoint.read::<f32>(name, &[rows, cols], Layout::AsStored)?;
                let row_bytes = cols / SUPER_BLOCK * kquant.block_bytes();
                let mut bytes = vec![0u8; rows * row_bytes];
                bytes
                    .par_chunks_mut(row_bytes)
                    .zip(values.par_chunks(cols))
                    .try_for_each(|(dst, row)| {
                        let blocks = llmjp_weights::kquant::quantize(kquant, row)?;
                        dst.copy_from_slice(&blocks);
                        Ok::<_, WeightsError>(())
                    })?;
                writer.add_kquant(name.clone(), kquant, rows, cols, Cow::Owned(bytes))?;
                quantized += 1;
            }
            (KQuantChoice::Block(format), &[rows, cols]) => {
                let (values, scales) =
                    quant_matrix(&checkpoint, name, rows, cols, format)?.into_parts();
                let blocks = cols / BLOCK;
                let shape = vec![rows, blocks * format.data_bytes()];
                writer.add(
                    name.clone(),
                    values_dtype(format),
                    shape,
                    Cow::Owned(values),
                )?;
                let scales = Cow::Owned(scales);
                let scale_name = format!("{name}{SCALE_SUFFIX}");
                writer.add(scale_name, Dtype::F16, vec![rows, blocks], scales)?;
                quantized += 1;
            }
            _ => {
                let view = checkpoint.view(name, &meta.shape)?;
                writer.add(
                    name.clone(),
                    view.dtype(),
                    meta.shape,
                    Cow::Owned(view.bytes().to_vec()),
                )?;
                view.release();
                copied += 1;
            }
        }
        on_progress(done + 1, total);
    }
    let written = writer.finish()?;
    let mut raw = read_json(&config_path)?;
    let group = match format {
        QuantizeFormat::Block(_) => BLOCK,
        QuantizeFormat::KMix(_) => SUPER_BLOCK,
    };
    raw["quantization_config"] = json!({
        "quant_method": llmjp_weights::QUANT_METHOD,
        "format": format.name(),
        "group_size": group,
    });
    copy_side_files(src, out)?;
    write_json(&out.join("config.json"), &raw)?;
    Ok(QuantizedCheckpoint {
        quantized,
        copied,
        bytes: written.bytes,
        shards: written.shards,
    })
}

/// Copies the folder's other regular files (tokenizer, generation config, …), each written
/// new and renamed into place.
fn copy_side_files(src: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| WeightsError::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WeightsError::io(src, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        let from = entry.path();
        if weights || name == "config.json" || name.starts_with(TEMP_PREFIX) || !from.is_file() {
            continue;
        }
        copy_new(&from, &out.join(&name))?;
    }
    Ok(())
}
