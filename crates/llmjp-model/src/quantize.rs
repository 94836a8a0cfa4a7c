//! Writing a quantized checkpoint (`llmjp quantize`): a model folder whose linear weights
//! are stored in a block format, loaded in place (memory-mapped, no re-quantization).
//!
//! Layout: safetensors shards as on the Hub; each quantized weight `X.weight` holds its
//! values (`I8 [out, in]` for Q8_0, `U8 [out, in / 2]` for Q4_0, llama.cpp's nibble order)
//! and `X.weight_scale` its f16 scales (`[out, in / 32]`); every other tensor is copied as
//! stored. `config.json` gains `"quantization_config": {"quant_method": "llmjp", "format":
//! "q8_0", "group_size": 32}`; the tokenizer and generation files are copied.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use llmjp_weights::quant::BlockFormat;
use llmjp_weights::{read_json, Checkpoint, Dtype, ModelConfig, TensorView, WeightsError};
use safetensors::tensor::View;
use serde_json::json;

use crate::kernels::QuantMatrix;
use crate::linear::{quant_matrix, quantization, SCALE_SUFFIX};
use crate::{ModelError, Result};

/// Shards are cut at this size, as the Hub's checkpoints are.
const SHARD_BYTES: usize = 2 << 30;

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

/// One tensor of the output.
enum Entry {
    Quantized(String, QuantMatrix),
    Copied(String, TensorView),
}

/// Writes the checkpoint in `src` with its linear weights quantized to `format` (as
/// `--dtype q8_0|q4_0` would quantize them on load) into the folder `out`, calling
/// `on_progress(done, total)` per tensor. `out` is created if needed and must not be `src`.
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
    std::fs::create_dir_all(out).map_err(|e| WeightsError::io(out, e))?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if same(src, out) {
        return Err(ModelError::InvalidQuantized(
            "the output folder is the model's own folder".into(),
        ));
    }
    let names: Vec<String> = checkpoint.names().into_iter().map(String::from).collect();
    let total = names.len();
    let mut report = QuantizedCheckpoint {
        quantized: 0,
        copied: 0,
        bytes: 0,
        shards: 0,
    };
    let (mut shard, mut shard_bytes) = (Vec::new(), 0usize);
    let mut files: Vec<(Vec<String>, std::path::PathBuf)> = Vec::new();
    for (done, name) in names.iter().enumerate() {
        let meta = checkpoint.meta(name)?;
        let format = match meta.shape[..] {
            [rows, cols] => quantization(&checkpoint, Some(format), name, rows, cols)?,
            _ => None,
        };
        let entry = match (format, &meta.shape[..]) {
            (Some(format), &[rows, cols]) => {
                report.quantized += 1;
                Entry::Quantized(
                    name.clone(),
                    quant_matrix(&checkpoint, name, rows, cols, format)?,
                )
            }
            _ => {
                report.copied += 1;
                Entry::Copied(name.clone(), checkpoint.view(name, &meta.shape)?)
            }
        };
        shard_bytes += entry.size();
        shard.push(entry);
        if shard_bytes >= SHARD_BYTES || done + 1 == total {
            let path = out.join(format!("model-{:05}.safetensors.part", files.len() + 1));
            report.bytes += shard_bytes as u64;
            files.push((write_shard(&shard, &path)?, path));
            shard.clear();
            shard_bytes = 0;
        }
        on_progress(done + 1, total);
    }
    report.shards = files.len();
    let mut weight_map = BTreeMap::new();
    for (i, (tensors, part)) in files.iter().enumerate() {
        let file = if files.len() == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, files.len())
        };
        std::fs::rename(part, out.join(&file)).map_err(|e| WeightsError::io(part, e))?;
        weight_map.extend(tensors.iter().map(|t| (t.clone(), file.clone())));
    }
    let index = out.join("model.safetensors.index.json");
    if files.len() > 1 {
        let json = json!({"metadata": {"total_size": report.bytes}, "weight_map": weight_map});
        write_json(&index, &json)?;
    } else if index.exists() {
        std::fs::remove_file(&index).map_err(|e| WeightsError::io(&index, e))?;
    }
    let mut raw = read_json(&config_path)?;
    raw["quantization_config"] = json!({
        "quant_method": llmjp_weights::QUANT_METHOD,
        "format": format.name(),
        "group_size": llmjp_weights::quant::BLOCK,
    });
    write_json(&out.join("config.json"), &raw)?;
    copy_side_files(src, out)?;
    Ok(report)
}

impl Entry {
    fn size(&self) -> usize {
        match self {
            Self::Quantized(_, m) => m.size_bytes(),
            Self::Copied(_, view) => view.bytes().len(),
        }
    }
}

/// A tensor to serialize: a dtype, a shape and borrowed bytes.
struct Bytes<'a>(Dtype, Vec<usize>, &'a [u8]);

impl View for Bytes<'_> {
    fn dtype(&self) -> Dtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

/// Writes one shard; returns the names of its tensors.
fn write_shard(entries: &[Entry], path: &Path) -> Result<Vec<String>> {
    let mut tensors = Vec::new();
    for entry in entries {
        match entry {
            Entry::Quantized(name, m) => {
                let dtype = match m.format() {
                    BlockFormat::Q8_0 => Dtype::I8,
                    BlockFormat::Q4_0 => Dtype::U8,
                };
                let blocks = m.cols() / llmjp_weights::quant::BLOCK;
                let values = vec![m.rows(), blocks * m.format().data_bytes()];
                tensors.push((name.clone(), Bytes(dtype, values, m.data())));
                let scales = vec![m.rows(), blocks];
                let scale_name = format!("{name}{SCALE_SUFFIX}");
                tensors.push((scale_name, Bytes(Dtype::F16, scales, m.scale_bytes())));
            }
            Entry::Copied(name, view) => {
                let shape = view.shape().to_vec();
                tensors.push((name.clone(), Bytes(view.dtype(), shape, view.bytes())));
            }
        }
    }
    let names = tensors.iter().map(|(n, _)| n.clone()).collect();
    let metadata = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(tensors, Some(metadata), path).map_err(|e| {
        ModelError::Weights(WeightsError::io(path, std::io::Error::other(e.to_string())))
    })?;
    Ok(names)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).map_err(|e| WeightsError::io(path, e).into())
}

/// Copies the folder's other regular files (tokenizer, generation config, …).
fn copy_side_files(src: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| WeightsError::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WeightsError::io(src, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        let from = entry.path();
        if weights || name == "config.json" || !from.is_file() {
            continue;
        }
        std::fs::copy(&from, out.join(&name)).map_err(|e| WeightsError::io(&from, e))?;
    }
    Ok(())
}
