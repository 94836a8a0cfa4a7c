//! Writing a quantized checkpoint (`llmjp quantize`): a model folder whose linear weights
//! are stored in a block format, loaded in place (memory-mapped, no re-quantization).
//!
//! Layout: safetensors shards as on the Hub; each quantized weight `X.weight` holds its
//! values (`I8 [out, in]` for Q8_0, `U8 [out, in / 2]` for Q4_0, llama.cpp's nibble order)
//! and `X.weight_scale` its f16 scales (`[out, in / 32]`); every other tensor is copied as
//! stored. `config.json` gains `"quantization_config": {"quant_method": "llmjp", "format":
//! "q8_0", "group_size": 32}`; the tokenizer and generation files are copied.

use std::borrow::Cow;
use std::path::Path;

use llmjp_weights::atomic::{copy_new, refuse_shared_files, TEMP_PREFIX};
use llmjp_weights::quant::{values_dtype, BlockFormat, BLOCK, SCALE_SUFFIX};
use llmjp_weights::writer::{write_json, CheckpointWriter};
use llmjp_weights::{read_json, Checkpoint, Dtype, ModelConfig, WeightsError};
use serde_json::json;

use crate::linear::{quant_matrix, quantization};
use crate::{ModelError, Result};

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

/// Writes the checkpoint in `src` with its linear weights quantized to `format` (as
/// `--dtype q8_0|q4_0` would quantize them on load) into the folder `out`, calling
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
    format: BlockFormat,
    out: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<QuantizedCheckpoint> {
    let config_path = src.join("config.json");
    let config = ModelConfig::from_file(&config_path)?;
    if let Some(stored) = config.quantization {
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
        let format = match meta.shape[..] {
            [rows, cols] => quantization(&checkpoint, Some(format), name, rows, cols)?,
            _ => None,
        };
        match (format, &meta.shape[..]) {
            (Some(format), &[rows, cols]) => {
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
    raw["quantization_config"] = json!({
        "quant_method": llmjp_weights::QUANT_METHOD,
        "format": format.name(),
        "group_size": llmjp_weights::quant::BLOCK,
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
