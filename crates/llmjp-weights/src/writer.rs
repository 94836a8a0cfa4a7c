//! [`CheckpointWriter`]: writes tensors as safetensors shards with an index, as the Hub's
//! checkpoints are laid out (what `llmjp quantize` and the GGUF import produce).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::atomic::{write_new, NewFile};
use crate::kquant::{KQuant, SUPER_BLOCK};
use crate::{Dtype, Result, WeightsError};

/// The `__metadata__` key of a safetensors shard that marks tensor `name` as K-quant
/// super-blocks: `kquant:{name}`, its value the format's name (`q4_k`, `q5_k`, `q6_k`).
pub fn kquant_key(name: &str) -> String {
    format!("kquant:{name}")
}

/// Shards are cut at this size, as the Hub's checkpoints are.
pub const SHARD_BYTES: usize = 2 << 30;

/// One tensor to write.
struct Pending<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
    kquant: Option<KQuant>,
}

/// Writes tensors into a folder: `model.safetensors`, or shards of about 2 GiB and
/// `model.safetensors.index.json`. Tensors are held until their shard is full; each shard
/// is written under a temporary name and renamed into place by [`finish`](Self::finish)
/// ([`atomic`](crate::atomic)): a writer dropped before it finishes leaves no file.
pub struct CheckpointWriter<'a> {
    out: PathBuf,
    pending: Vec<Pending<'a>>,
    pending_bytes: usize,
    /// Each written shard, not yet renamed into place, and its tensors.
    parts: Vec<(NewFile, Vec<String>)>,
    bytes: u64,
}

/// What a [`CheckpointWriter`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Shard files.
    pub shards: usize,
}

impl<'a> CheckpointWriter<'a> {
    /// A writer into `out` (created if needed).
    pub fn new(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| WeightsError::write(out, e))?;
        Ok(Self {
            out: out.to_path_buf(),
            pending: Vec::new(),
            pending_bytes: 0,
            parts: Vec::new(),
            bytes: 0,
        })
    }

    /// Adds a tensor; writes a shard when enough is held.
    pub fn add(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Cow<'a, [u8]>,
    ) -> Result<()> {
        self.push(Pending {
            name,
            dtype,
            shape,
            data,
            kquant: None,
        })
    }

    /// Adds a `[rows, cols]` matrix stored as `format`'s super-blocks (`cols` a multiple of
    /// 256): `U8 [rows, cols / 256 × block bytes]`, marked in its shard's metadata
    /// ([`kquant_key`]) so that [`Checkpoint`](crate::Checkpoint) reads it as the matrix.
    pub fn add_kquant(
        &mut self,
        name: String,
        format: KQuant,
        rows: usize,
        cols: usize,
        data: Cow<'a, [u8]>,
    ) -> Result<()> {
        let row_bytes = cols / SUPER_BLOCK * format.block_bytes();
        if !cols.is_multiple_of(SUPER_BLOCK) || data.len() != rows * row_bytes {
            return Err(WeightsError::NotWholeBlocks {
                len: data.len(),
                block: format.block_bytes(),
            });
        }
        self.push(Pending {
            name,
            dtype: Dtype::U8,
            shape: vec![rows, row_bytes],
            data,
            kquant: Some(format),
        })
    }

    fn push(&mut self, tensor: Pending<'a>) -> Result<()> {
        self.pending_bytes += tensor.data.len();
        self.pending.push(tensor);
        if self.pending_bytes >= SHARD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self
            .out
            .join(format!("model-{:05}.safetensors", self.parts.len() + 1));
        let mut file = NewFile::create(&path)?;
        write_safetensors(&mut file, &self.pending).map_err(|e| WeightsError::write(&path, e))?;
        let names = self.pending.drain(..).map(|p| p.name).collect();
        self.bytes += self.pending_bytes as u64;
        self.pending_bytes = 0;
        self.parts.push((file, names));
        Ok(())
    }

    /// Writes what is held and renames the shards into place, with an index when there are
    /// several (after the shards it names).
    pub fn finish(mut self) -> Result<Written> {
        self.flush()?;
        let count = self.parts.len();
        let mut weight_map = BTreeMap::new();
        for (i, (part, names)) in std::mem::take(&mut self.parts).into_iter().enumerate() {
            let file = if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            };
            part.commit_as(&self.out.join(&file))?;
            weight_map.extend(names.into_iter().map(|n| (n, file.clone())));
        }
        let index = self.out.join("model.safetensors.index.json");
        if count > 1 {
            let json = json!({"metadata": {"total_size": self.bytes}, "weight_map": weight_map});
            write_json(&index, &json)?;
        } else if std::fs::symlink_metadata(&index).is_ok() {
            std::fs::remove_file(&index).map_err(|e| WeightsError::write(&index, e))?;
        }
        Ok(Written {
            bytes: self.bytes,
            shards: count,
        })
    }
}

/// Writes `tensors` in the safetensors format: the header's length (u64, little-endian),
/// the JSON header padded with spaces to 8 bytes, the data in the given order.
fn write_safetensors(out: &mut impl Write, tensors: &[Pending<'_>]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("format".into(), json!("pt"));
    for tensor in tensors {
        if let Some(format) = tensor.kquant {
            metadata.insert(kquant_key(&tensor.name), json!(format.name()));
        }
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(metadata));
    let mut offset = 0;
    for tensor in tensors {
        let end = offset + tensor.data.len();
        let dtype = serde_json::to_value(tensor.dtype).map_err(std::io::Error::other)?;
        header.insert(
            tensor.name.clone(),
            json!({"dtype": dtype, "shape": tensor.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for tensor in tensors {
        out.write_all(&tensor.data)?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON, a new file renamed over `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    write_new(path, text.as_bytes())
}
