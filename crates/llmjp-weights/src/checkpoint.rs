//! Memory-mapped safetensors checkpoints, single-file or sharded.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::kquant::{self, KQuant, SUPER_BLOCK};
use crate::{read_json, Result, WeightsError};

pub use safetensors::Dtype;

/// The float types a tensor can be read as.
pub trait Element: Copy + Send + Sync + 'static {
    /// Converts from f32 (rounding to nearest even where narrower).
    fn from_f32(x: f32) -> Self;
    /// Converts from f16.
    fn from_f16(x: f16) -> Self;
    /// Converts from bf16.
    fn from_bf16(x: bf16) -> Self;
}

impl Element for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f16(x: f16) -> Self {
        x.to_f32()
    }
    fn from_bf16(x: bf16) -> Self {
        x.to_f32()
    }
}

impl Element for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn from_f16(x: f16) -> Self {
        x
    }
    fn from_bf16(x: bf16) -> Self {
        f16::from_f32(x.to_f32())
    }
}

impl Element for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn from_f16(x: f16) -> Self {
        bf16::from_f32(x.to_f32())
    }
    fn from_bf16(x: bf16) -> Self {
        x
    }
}

/// How a 2-D tensor is laid out when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As stored (`[out, in]` for a linear layer).
    AsStored,
    /// Transposed (`[in, out]`), the layout `x @ w` wants.
    Transposed,
}

/// A mapped file and its SIGBUS message (see [`crate::sigbus`]).
pub(crate) struct MappedFile {
    mmap: Mmap,
    _sigbus: crate::sigbus::Registration,
}

impl std::ops::Deref for MappedFile {
    type Target = Mmap;

    fn deref(&self) -> &Mmap {
        &self.mmap
    }
}

impl MappedFile {
    /// Maps a regular file read-only.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        crate::regular_file_len(path)?;
        let file = File::open(path).map_err(|source| WeightsError::io(path, source))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we rely on
        // nobody truncating a checkpoint while it is being read. If somebody does, the
        // SIGBUS that follows is explained by a message naming the file (crate::sigbus).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let sigbus = crate::sigbus::Registration::new(mmap.as_ptr(), mmap.len(), path);
        let mmap = MappedFile {
            mmap,
            _sigbus: sigbus,
        };
        // Pages read from disk through this map come in 2 MB folios where the filesystem
        // can (fewer faults and TLB misses for weights used in place); advice only.
        #[cfg(target_os = "linux")]
        let _ = mmap.advise(memmap2::Advice::HugePage);
        Ok(mmap)
    }
}

/// One memory-mapped `.safetensors` file with its validated header.
struct Shard {
    path: PathBuf,
    mmap: Arc<MappedFile>,
    data_start: usize,
    metadata: Metadata,
    /// Tensors stored as K-quant super-blocks (marked in `__metadata__`, see
    /// [`kquant_key`](crate::writer::kquant_key)).
    kquants: HashMap<String, KQuant>,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let mmap = MappedFile::open(path)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| WeightsError::InvalidSafetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let invalid = |message: String| WeightsError::InvalidSafetensors {
            path: path.to_path_buf(),
            message,
        };
        let mut kquants = HashMap::new();
        for (key, value) in metadata.metadata().iter().flatten() {
            let Some(name) = key.strip_prefix("kquant:") else {
                continue;
            };
            let format = KQuant::from_name(value)
                .ok_or_else(|| invalid(format!("{key}: unknown K-quant format {value:?}")))?;
            let info = metadata
                .info(name)
                .ok_or_else(|| invalid(format!("{key} names no tensor of this file")))?;
            let bytes = format.block_bytes();
            match info.shape[..] {
                [_, row] if info.dtype == Dtype::U8 && row > 0 && row % bytes == 0 => {}
                _ => {
                    return Err(invalid(format!(
                        "{name}: {format} super-blocks stored as {:?} {:?}, expected U8 [rows, n × {bytes}]",
                        info.dtype, info.shape
                    )))
                }
            }
            kquants.insert(name.to_string(), format);
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            data_start: 8 + header_len,
            metadata,
            kquants,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        // read_metadata checked that every tensor lies inside the buffer.
        &self.mmap[self.data_start + start..self.data_start + end]
    }

    /// Tells the kernel the pages of `info` are no longer needed, so reading a checkpoint
    /// does not keep it resident next to the converted weights.
    fn release(&self, info: &TensorInfo) {
        let (start, end) = info.data_offsets;
        release_range(&self.mmap, self.data_start + start, self.data_start + end);
    }
}

/// Drops the whole pages of `start..end` of a mapped file from memory (they are read again
/// from the file if touched).
fn release_range(mmap: &MappedFile, start: usize, end: usize) {
    let page = 4096;
    let first = start.div_ceil(page) * page;
    let last = end / page * page;
    #[cfg(unix)]
    if last > first {
        // SAFETY: the map is private and read-only: dropped pages are re-read from the file
        // if touched again, so references into them stay valid.
        let _ =
            unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first) };
    }
    #[cfg(not(unix))]
    let _ = (mmap, first, last);
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A checkpoint folder: `model.safetensors`, or `model.safetensors.index.json` and its
/// shards. Files are memory-mapped and their headers validated when opened; tensor data is
/// read, converted and released one tensor at a time.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    locations: HashMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.locations.len())
            .finish()
    }
}

/// A tensor's stored dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// The stored dtype.
    pub dtype: Dtype,
    /// The stored shape.
    pub shape: Vec<usize>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`, preferring a sharded index when there is one.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_files: Vec<String> = if crate::exists(&index_path) {
            let index: ShardIndex =
                serde_json::from_value(read_json(&index_path)?).map_err(|source| {
                    WeightsError::Json {
                        path: index_path.clone(),
                        source,
                    }
                })?;
            let mut files: Vec<String> = index.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            files
        } else if crate::exists(&single) {
            vec!["model.safetensors".into()]
        } else {
            return Err(WeightsError::NotFound { path: single });
        };
        let mut shards = Vec::with_capacity(shard_files.len());
        let mut locations = HashMap::new();
        for file in &shard_files {
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(WeightsError::InvalidConfig {
                    path: index_path.clone(),
                    message: format!("shard name {file:?} leaves the model folder"),
                });
            }
            let shard = Shard::open(&dir.join(file))?;
            for name in shard.metadata.tensors().into_keys() {
                locations.insert(name, shards.len());
            }
            shards.push(shard);
        }
        Ok(Self {
            dir,
            shards,
            locations,
        })
    }

    /// The folder the checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.locations.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// The K-quant format `name` is stored in, if it is stored as super-blocks (its stored
    /// shape is then `[rows, cols / 256 × block bytes]` of U8; [`read`](Self::read) takes
    /// and gives the matrix, `[rows, cols]`).
    pub fn kquant(&self, name: &str) -> Option<KQuant> {
        let shard = &self.shards[*self.locations.get(name)?];
        shard.kquants.get(name).copied()
    }

    /// The super-blocks of K-quant matrix `name`, `[rows, cols]`, in the mapped file: its
    /// format and the bytes (`U8 [rows, cols / 256 × block bytes]`).
    pub fn kquant_view(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(KQuant, TensorView)> {
        let (shard, _) = self.locate(name)?;
        let format = self
            .kquant(name)
            .ok_or_else(|| WeightsError::UnsupportedDtype {
                path: shard.path.clone(),
                name: name.to_string(),
                dtype: Dtype::U8,
            })?;
        let stored = [rows, cols / SUPER_BLOCK * format.block_bytes()];
        if !cols.is_multiple_of(SUPER_BLOCK) {
            return Err(WeightsError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: vec![rows, cols],
                found: self.meta(name)?.shape,
            });
        }
        Ok((format, self.view(name, &stored)?))
    }

    /// Stored dtype and shape of `name`.
    pub fn meta(&self, name: &str) -> Result<TensorMeta> {
        let (_, info) = self.locate(name)?;
        Ok(TensorMeta {
            dtype: info.dtype,
            shape: info.shape.clone(),
        })
    }

    fn locate(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let missing = || WeightsError::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        };
        let shard = &self.shards[*self.locations.get(name).ok_or_else(missing)?];
        let info = shard.info(name).ok_or_else(missing)?;
        Ok((shard, info))
    }

    /// Tensor `name` as stored, left in the memory-mapped file (for zero-copy use), after
    /// checking that its shape is `expected`; any dtype. The mapping stays alive as long
    /// as the view.
    pub fn view(&self, name: &str, expected: &[usize]) -> Result<TensorView> {
        let (shard, info) = self.shaped(name, expected)?;
        let (start, end) = info.data_offsets;
        Ok(TensorView {
            mmap: shard.mmap.clone(),
            offset: shard.data_start + start,
            len: end - start,
            dtype: info.dtype,
            shape: info.shape.clone(),
        })
    }

    /// `name`, checked to have shape `expected`.
    fn shaped(&self, name: &str, expected: &[usize]) -> Result<(&Shard, &TensorInfo)> {
        let (shard, info) = self.locate(name)?;
        if info.shape != expected {
            return Err(WeightsError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok((shard, info))
    }

    /// `name`, checked to have shape `expected` and a float dtype.
    fn checked(&self, name: &str, expected: &[usize]) -> Result<(&Shard, &TensorInfo)> {
        let (shard, info) = self.shaped(name, expected)?;
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(WeightsError::UnsupportedDtype {
                path: shard.path.clone(),
                name: name.to_string(),
                dtype: info.dtype,
            });
        }
        Ok((shard, info))
    }

    /// Reads tensor `name`, checks that its shape is `expected`, and converts it to `T` in
    /// the given layout (`Transposed` needs a 2-D tensor). The stored pages are released
    /// afterwards.
    pub fn read<T: Element>(
        &self,
        name: &str,
        expected: &[usize],
        layout: Layout,
    ) -> Result<Vec<T>> {
        if let (Some(_), &[rows, cols]) = (self.kquant(name), expected) {
            let (format, view) = self.kquant_view(name, rows, cols)?;
            let values = kquant::dequantize(format, view.bytes())?;
            view.release();
            let values: Vec<T> = values.into_iter().map(T::from_f32).collect();
            return Ok(match layout {
                Layout::Transposed => transpose(&values, rows, cols),
                Layout::AsStored => values,
            });
        }
        let (shard, info) = self.checked(name, expected)?;
        let bytes = shard.bytes(info);
        let values = match info.dtype {
            Dtype::F16 => decode(bytes, |b| T::from_f16(f16::from_le_bytes(b))),
            Dtype::BF16 => decode(bytes, |b| T::from_bf16(bf16::from_le_bytes(b))),
            _ => decode(bytes, |b| T::from_f32(f32::from_le_bytes(b))),
        };
        shard.release(info);
        Ok(match (layout, expected) {
            (Layout::Transposed, &[rows, cols]) => transpose(&values, rows, cols),
            _ => values,
        })
    }
}

/// A tensor as stored in a memory-mapped checkpoint file: its dtype, shape and
/// little-endian bytes (not necessarily aligned to the element size).
#[derive(Clone)]
pub struct TensorView {
    mmap: Arc<MappedFile>,
    offset: usize,
    len: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl TensorView {
    /// The tensor's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.offset..self.offset + self.len]
    }

    /// The stored dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Drops the tensor's pages from memory (after converting it, so the source does not
    /// stay resident beside the result); they are read again from the file if touched.
    pub fn release(&self) {
        self.release_bytes(0..self.len);
    }

    /// Drops the whole pages of bytes `range` of the tensor from memory (see
    /// [`release`](Self::release)).
    pub fn release_bytes(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        release_range(
            &self.mmap,
            self.offset + range.start.min(end),
            self.offset + end,
        );
    }

    /// Maps all of the tensor's pages now (reading them from disk if they are not cached),
    /// so that later use does not wait on page faults.
    pub fn populate(&self) {
        #[cfg(target_os = "linux")]
        if self
            .mmap
            .advise_range(memmap2::Advice::PopulateRead, self.offset, self.len)
            .is_ok()
        {
            return;
        }
        // Older kernels: touch one byte per page.
        let bytes = self.bytes();
        let sum = (0..bytes.len())
            .step_by(4096)
            .fold(0u8, |acc, i| acc ^ bytes[i]);
        std::hint::black_box(sum);
    }
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

fn decode<T, const N: usize>(bytes: &[u8], convert: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| convert(chunk.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// `[rows, cols]` → `[cols, rows]`, in cache-sized tiles.
fn transpose<T: Copy>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    let mut out = Vec::with_capacity(values.len());
    let spare = out.spare_capacity_mut();
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    spare[c * rows + r].write(values[r * cols + c]);
                }
            }
        }
    }
    // SAFETY: the tiles cover every (r, c), so all rows * cols slots were written.
    unsafe { out.set_len(values.len()) };
    out
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let values: Vec<u32> = (0..6).collect();
        assert_eq!(transpose(&values, 2, 3), [0, 3, 1, 4, 2, 5]);
        let big: Vec<u32> = (0..(70 * 33)).collect();
        let t = transpose(&big, 70, 33);
        assert_eq!(t[5 * 70 + 69], big[69 * 33 + 5]);
        assert_eq!(transpose(&t, 33, 70), big);
    }
}
