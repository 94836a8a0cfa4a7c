//! GGUF files of Llama / Mixtral models as quantized checkpoint folders: what llama.cpp's
//! users have, run by the same loader as `llmjp quantize`'s output.
//!
//! Q8_0 and Q4_0 blocks are split into values and scales (a copy, no re-quantization),
//! F32 / F16 / BF16 tensors copied, the query and key rows put back in Hugging Face's order,
//! stacked experts split per expert; `config.json` comes from the metadata. Any other
//! GGML type is an error naming the tensor and its type. The tokenizer files come from a
//! folder given alongside (llm-jp's tokenizer), else from the GGUF's own vocabulary
//! ([`TokenizerFiles`]).

use std::borrow::Cow;
use std::path::Path;

use serde_json::json;

use super::cache;
use super::llama::{checked_hf_row_order, expected_shape, hf_name, HfTensor};
use super::tokenizer::TokenizerFiles;
use super::{GgmlType, Gguf, GgufFile, GgufTensor};
use crate::atomic::copy_new;
use crate::quant::{split, values_dtype, BlockFormat, BLOCK, SCALE_SUFFIX};
use crate::writer::{write_json, CheckpointWriter};
use crate::{Dtype, ModelConfig, Result, WeightsError, QUANT_METHOD};

/// The tokenizer files copied from the folder given alongside.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// What [`import`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The block format most weights are in (`None`: a float GGUF).
    pub format: Option<BlockFormat>,
    /// Tensors written (experts counted one by one).
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// Writes the model in the GGUF file `gguf` as a checkpoint folder `out` (see the module
/// docs), with the tokenizer files of `tokenizer_dir`, or without one those of the
/// tokenizer the GGUF carries (an error when it carries none it can describe), calling
/// `on_progress(done, total)` per GGUF tensor.
pub fn import(
    gguf: &Path,
    tokenizer_dir: Option<&Path>,
    out: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Imported> {
    let file = GgufFile::open(gguf)?;
    let header = file.header();
    let config = header.model_config()?;
    let mut raw = header.config_json()?;
    let invalid = |message: String| WeightsError::InvalidGguf {
        path: gguf.to_path_buf(),
        message,
    };
    // The tokenizer first: a file without a usable one fails before any tensor is copied.
    let embedded = match tokenizer_dir {
        Some(_) => None,
        None => {
            let files = TokenizerFiles::for_model(header, config.vocab_size)?;
            Some(files.ok_or_else(|| {
                invalid(
                    "it carries no tokenizer: pass llm-jp's tokenizer folder (--tokenizer DIR), \
                     or put tokenizer.json and tokenizer_config.json beside the GGUF file"
                        .into(),
                )
            })?)
        }
    };
    check_tensors(header, &config).map_err(invalid)?;
    let mut writer = CheckpointWriter::new(out)?;
    let (mut tensors, mut counts) = (0, [0usize; 2]);
    let total = header.tensors.len();
    for (done, tensor) in header.tensors.iter().enumerate() {
        let target = match hf_name(&tensor.name) {
            Some(target) => target,
            // llama.cpp's precomputed RoPE factors: ours come from the config.
            None if tensor.name == "rope_freqs.weight" => continue,
            None => return Err(invalid(format!("unknown tensor {}", tensor.name))),
        };
        let shape = tensor.shape();
        let data = file.data(tensor);
        let pieces: Vec<(String, Vec<usize>, &[u8])> = match target {
            HfTensor::Dense(name) => vec![(name, shape.clone(), data)],
            HfTensor::Experts { layer, matrix } => {
                let [experts, rows, cols] = shape[..] else {
                    return Err(invalid(format!("{} is not 3-D", tensor.name)));
                };
                let each = data.len() / experts.max(1);
                (0..experts)
                    .map(|e| {
                        let name = format!(
                            "model.layers.{layer}.block_sparse_moe.experts.{e}.{matrix}.weight"
                        );
                        (name, vec![rows, cols], &data[e * each..(e + 1) * each])
                    })
                    .collect()
            }
        };
        for (name, shape, bytes) in pieces {
            let heads = if name.ends_with("self_attn.q_proj.weight") {
                Some(config.num_attention_heads)
            } else if name.ends_with("self_attn.k_proj.weight") {
                Some(config.num_key_value_heads)
            } else {
                None
            };
            let rows = shape.first().copied().unwrap_or(1);
            let order = match heads {
                None => None,
                Some(h) => Some(checked_hf_row_order(rows, h).ok_or_else(|| {
                    invalid(format!(
                        "{}: {rows} rows are not {h} heads of an even width",
                        tensor.name
                    ))
                })?),
            };
            tensors += add(&mut writer, tensor, name, shape, bytes, order.as_deref())
                .map_err(|m| invalid(format!("{}: {m}", tensor.name)))?;
            if let Some(i) = [GgmlType::Q8_0, GgmlType::Q4_0]
                .iter()
                .position(|&k| k == tensor.kind)
            {
                counts[i] += 1;
            }
        }
        on_progress(done + 1, total);
    }
    let written = writer.finish()?;
    let format = match counts {
        [0, 0] => None,
        [q8, q4] if q8 >= q4 => Some(BlockFormat::Q8_0),
        _ => Some(BlockFormat::Q4_0),
    };
    if let Some(format) = format {
        raw["quantization_config"] = json!({
            "quant_method": QUANT_METHOD,
            "format": format.name(),
            "group_size": BLOCK,
        });
    }
    if let Some(files) = embedded {
        files.write(out)?;
    }
    if let Some(dir) = tokenizer_dir {
        for name in TOKENIZER_FILES {
            let from = dir.join(name);
            if from.is_file() {
                copy_new(&from, &out.join(name))?;
            }
        }
    }
    // Last: a folder without its config.json is not taken for a model.
    write_json(&out.join("config.json"), &raw)?;
    Ok(Imported {
        format,
        tensors,
        bytes: written.bytes,
    })
}

/// Checks, before anything is written, that every tensor is of a type [`add`] copies, is
/// one the model has ([`expected_shape`]: no unknown names, no layer past the last) and
/// has the shape the config implies. The message names the first tensor that is not.
fn check_tensors(header: &Gguf, config: &ModelConfig) -> std::result::Result<(), String> {
    for tensor in &header.tensors {
        // llama.cpp's precomputed RoPE factors: ours come from the config.
        if tensor.name == "rope_freqs.weight" {
            continue;
        }
        let name = &tensor.name;
        let target = hf_name(name).ok_or_else(|| format!("unknown tensor {name}"))?;
        let supported = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        if !supported.contains(&tensor.kind) {
            return Err(format!(
                "{name}: {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K are)",
                tensor.kind
            ));
        }
        if tensor.kind.kquant().is_some() && tensor.shape().len() != 2 {
            return Err(format!(
                "{name}: a {} tensor that is not a matrix",
                tensor.kind
            ));
        }
        let expected = expected_shape(config, &target).ok_or_else(|| {
            format!(
                "{name} is not a tensor of this model ({} layers, {})",
                config.num_hidden_layers,
                match config.num_local_experts {
                    0 | 1 => "no experts".to_string(),
                    n => format!("{n} experts"),
                }
            )
        })?;
        let found = tensor.shape();
        if found != expected {
            return Err(format!(
                "{name} has shape {found:?}, the model's metadata implies {expected:?}"
            ));
        }
    }
    Ok(())
}

/// Adds one tensor (rows in `order` when given); returns how many tensors it wrote.
fn add(
    writer: &mut CheckpointWriter<'_>,
    tensor: &GgufTensor,
    name: String,
    shape: Vec<usize>,
    bytes: &[u8],
    order: Option<&[usize]>,
) -> std::result::Result<usize, String> {
    let rows = shape.first().copied().unwrap_or(1);
    let reordered = |bytes: &[u8]| -> Vec<u8> {
        let row = bytes.len() / rows.max(1);
        match order {
            Some(order) => order
                .iter()
                .flat_map(|&r| &bytes[r * row..(r + 1) * row])
                .copied()
                .collect(),
            None => bytes.to_vec(),
        }
    };
    let float = |dtype: Dtype| (dtype, Cow::Owned(reordered(bytes)));
    let (dtype, data) = match tensor.kind {
        GgmlType::F32 => float(Dtype::F32),
        GgmlType::F16 => float(Dtype::F16),
        GgmlType::BF16 => float(Dtype::BF16),
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let format = if tensor.kind == GgmlType::Q8_0 {
                BlockFormat::Q8_0
            } else {
                BlockFormat::Q4_0
            };
            let [rows, cols] = shape[..] else {
                return Err(format!(
                    "a {format} tensor of shape {shape:?} is not a matrix"
                ));
            };
            let blocks = split(format, &reordered(bytes)).map_err(|e| e.to_string())?;
            let values = vec![rows, cols / BLOCK * format.data_bytes()];
            writer
                .add(
                    name.clone(),
                    values_dtype(format),
                    values,
                    Cow::Owned(blocks.data),
                )
                .map_err(|e| e.to_string())?;
            let scales = blocks.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let scale_name = format!("{name}{SCALE_SUFFIX}");
            writer
                .add(
                    scale_name,
                    Dtype::F16,
                    vec![rows, cols / BLOCK],
                    Cow::Owned(scales),
                )
                .map_err(|e| e.to_string())?;
            return Ok(1);
        }
        kind if kind.kquant().is_some() => {
            let format = kind.kquant().expect("a K-quant");
            let [rows, cols] = shape[..] else {
                return Err(format!("a {format} tensor of shape {shape:?} is not a matrix"));
            };
            writer
                .add_kquant(name, format, rows, cols, Cow::Owned(reordered(bytes)))
                .map_err(|e| e.to_string())?;
            return Ok(1);
        }
        other => {
            return Err(format!(
                "GGML type {other} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K are)"
            ))
        }
    };
    writer
        .add(name, dtype, shape, data)
        .map_err(|e| e.to_string())?;
    Ok(1)
}

/// The environment variable naming the cache folder GGUF imports are kept in (default
/// `$XDG_CACHE_HOME/llmjp`, else `~/.cache/llmjp`).
pub const CACHE_ENV: &str = "LLMJP_CACHE_DIR";

/// The checkpoint folder of a GGUF file, imported once into the cache (`CACHE_ENV`, see
/// [`cache_root`]) and reused while the file keeps its content. The tokenizer files come
/// from `tokenizer_dir`, else from the GGUF's own folder when it holds `tokenizer.json`,
/// else from the tokenizer the GGUF carries; without any, an error asks for a folder.
pub fn cached(
    gguf: &Path,
    tokenizer_dir: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<std::path::PathBuf> {
    cached_in(&cache_root(), gguf, tokenizer_dir, on_progress)
}

/// [`cached`] into the cache folder `cache` (imports go to `cache/gguf`).
///
/// The folder is named by the file's stem and a fingerprint of its content (length,
/// modification time, its first 16 MiB and samples of the rest), so two files of one name
/// and size do not share it. Each import stages into a folder of its own, removed if it
/// fails; the first to finish renames its folder into place, and the others, finding it
/// complete, use it. Staging folders of imports that died are removed once stale.
pub fn cached_in(
    cache: &Path,
    gguf: &Path,
    tokenizer_dir: Option<&Path>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<std::path::PathBuf> {
    crate::regular_file_len(gguf)?;
    let parent = gguf.parent().unwrap_or(Path::new("."));
    let tokenizer_dir =
        tokenizer_dir.or_else(|| parent.join("tokenizer.json").is_file().then_some(parent));
    let stem = gguf.file_stem().unwrap_or_default().to_string_lossy();
    let label = format!("{stem}-{:016x}", cache::fingerprint(gguf)?);
    let root = cache.join("gguf");
    let dir = root.join(&label);
    if cache::is_complete(&dir) {
        return Ok(dir);
    }
    cache::remove_stale(&root);
    let staging = cache::Staging::create(&root, &label)?;
    import(gguf, tokenizer_dir, staging.path(), on_progress)?;
    staging.publish(&dir)?;
    Ok(dir)
}

/// Where llmjp keeps what it derives from files it is given: `$LLMJP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/llmjp`, else `~/.cache/llmjp`.
pub fn cache_root() -> std::path::PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_ENV) {
        return dir.into();
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Path::new(&dir).join("llmjp");
    }
    let home = var("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache").join("llmjp")
}
