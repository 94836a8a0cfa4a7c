//! [`CheckpointWriter`]: writes tensors as safetensors shards with an index, as the Hub's
//! checkpoints are laid out (what `llmjp quantize` and the GGUF import produce).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;
use serde_json::json;

use crate::{Dtype, Result, WeightsError};

/// Shards are cut at this size, as the Hub's checkpoints are.
pub const SHARD_BYTES: usize = 2 << 30;

/// One tensor to write.
struct Pending<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

impl View for &Pending<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors into a folder: `model.safetensors`, or shards of about 2 GiB and
/// `model.safetensors.index.json`. Tensors are held until their shard is full.
pub struct CheckpointWriter<'a> {
    out: PathBuf,
    pending: Vec<Pending<'a>>,
    pending_bytes: usize,
    /// Each written part file and its tensors.
    parts: Vec<(PathBuf, Vec<String>)>,
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
        std::fs::create_dir_all(out).map_err(|e| WeightsError::io(out, e))?;
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
        self.pending_bytes += data.len();
        self.pending.push(Pending {
            name,
            dtype,
            shape,
            data,
        });
        if self.pending_bytes >= SHARD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.out.join(format!(
            "model-{:05}.safetensors.part",
            self.parts.len() + 1
        ));
        let tensors: Vec<(String, &Pending)> =
            self.pending.iter().map(|p| (p.name.clone(), p)).collect();
        let metadata = [("format".to_string(), "pt".to_string())].into();
        safetensors::tensor::serialize_to_file(tensors, Some(metadata), &path)
            .map_err(|e| WeightsError::io(&path, std::io::Error::other(e.to_string())))?;
        let names = self.pending.drain(..).map(|p| p.name).collect();
        self.bytes += self.pending_bytes as u64;
        self.pending_bytes = 0;
        self.parts.push((path, names));
        Ok(())
    }

    /// Writes what is held and names the files (with an index when there are several).
    pub fn finish(mut self) -> Result<Written> {
        self.flush()?;
        let count = self.parts.len();
        let mut weight_map = BTreeMap::new();
        for (i, (part, names)) in self.parts.iter().enumerate() {
            let file = if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            };
            std::fs::rename(part, self.out.join(&file)).map_err(|e| WeightsError::io(part, e))?;
            weight_map.extend(names.iter().map(|n| (n.clone(), file.clone())));
        }
        let index = self.out.join("model.safetensors.index.json");
        if count > 1 {
            let json = json!({"metadata": {"total_size": self.bytes}, "weight_map": weight_map});
            write_json(&index, &json)?;
        } else if index.exists() {
            std::fs::remove_file(&index).map_err(|e| WeightsError::io(&index, e))?;
        }
        Ok(Written {
            bytes: self.bytes,
            shards: count,
        })
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).map_err(|e| WeightsError::io(path, e))
}
