//! llama.cpp's GGUF files (version 2 and 3): the header, the metadata and the tensor
//! directory, read from a memory-mapped file with every count, length and offset checked
//! against the bytes that are there and against fixed limits ([`MAX_TENSORS`],
//! [`MAX_METADATA_BYTES`], …; a sparse file's length costs nothing to fake), so that a
//! truncated or hostile file is an [`WeightsError::InvalidGguf`], never a panic or a huge
//! allocation.
//!
//! ```
//! use llmjp_weights::gguf::{GgmlType, Gguf, GgufValue};
//!
//! # fn main() -> Result<(), llmjp_weights::WeightsError> {
//! // A file with one metadata entry and one 2 × 3 f32 tensor (ne = [3, 2]).
//! let mut file = b"GGUF".to_vec();
//! file.extend(3u32.to_le_bytes()); // version
//! file.extend(1u64.to_le_bytes()); // tensors
//! file.extend(1u64.to_le_bytes()); // metadata entries
//! let string = |s: &str| [(s.len() as u64).to_le_bytes().to_vec(), s.as_bytes().to_vec()].concat();
//! file.extend(string("general.architecture"));
//! file.extend(8u32.to_le_bytes()); // string
//! file.extend(string("llama"));
//! file.extend(string("output.weight"));
//! file.extend(2u32.to_le_bytes()); // dimensions
//! file.extend(3u64.to_le_bytes());
//! file.extend(2u64.to_le_bytes());
//! file.extend(0u32.to_le_bytes()); // F32
//! file.extend(0u64.to_le_bytes()); // offset in the data
//! file.resize(file.len().next_multiple_of(32), 0); // the data starts aligned
//! for x in [1f32, 2., 3., 4., 5., 6.] { file.extend(x.to_le_bytes()); }
//!
//! let gguf = Gguf::parse(&file, "example.gguf".as_ref())?;
//! assert_eq!(gguf.get("general.architecture"), Some(&GgufValue::String("llama".into())));
//! let tensor = gguf.tensor("output.weight").unwrap();
//! assert_eq!((tensor.shape(), tensor.kind), (vec![2, 3], GgmlType::F32));
//! assert_eq!(&gguf.data(&file, tensor)[..4], &1f32.to_le_bytes());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

mod cache;
pub mod import;
pub mod llama;
pub mod tokenizer;

use crate::checkpoint::MappedFile;
use crate::{Result, WeightsError};

/// `"GGUF"` read as a little-endian u32.
const MAGIC: &[u8; 4] = b"GGUF";
/// Where the data starts, and every tensor's offset, unless `general.alignment` says.
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML's most dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting of arrays in metadata (real files nest none).
const MAX_DEPTH: usize = 4;

// Limits on what a header may make us allocate. A header's counts and lengths are checked
// against these fixed maxima, never only against the file's length: a sparse file costs
// nothing to make as long as any count it declares. Each is far above real models (a
// Mixtral 8x22B has about 560 tensors, Gemma 3 a vocabulary of 262,144 tokens, the largest
// chat templates are tens of kilobytes). Together they bound the memory a header can take
// to a few hundred MiB: 32 bytes a value, the metadata's bytes, the tensor directory.

/// Metadata values in all (array items included): a vocabulary of 250,000 tokens with its
/// scores, types and merges is about a million.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;
/// Metadata entries (keys); real files have a few dozen.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// Items in one metadata array (a vocabulary, its scores, its merges).
pub const MAX_ARRAY_ITEMS: u64 = 1 << 20;
/// Bytes in one metadata string (a token, a chat template, a license text).
pub const MAX_STRING_BYTES: u64 = 4 << 20;
/// Bytes the whole metadata section may take in the file.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;
/// Tensors in the directory.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Bytes in a tensor's name (llama.cpp refuses names of 64 bytes and more).
pub const MAX_TENSOR_NAME_BYTES: u64 = 256;

/// A GGML tensor type: how elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// 16-bit IEEE floats.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale and 16 bytes of 4-bit values (`(q - 8) × d`).
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// Blocks of 32: f16 scale, 5-bit values.
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// Blocks of 32: an f16 scale and 32 int8 values (`q × d`).
    Q8_0,
    /// Blocks of 32: f32 scale and sum, int8 values.
    Q8_1,
    /// Super-blocks of 256: 4-bit values, 6-bit scales and minimums per 32.
    Q4K,
    /// Super-blocks of 256: 5-bit values, 6-bit scales and minimums per 32.
    Q5K,
    /// Super-blocks of 256: 6-bit values, 8-bit scales per 16.
    Q6K,
    /// Any other type (other k-quants, i-quants, integers), by its GGML number.
    Other(u32),
}

impl GgmlType {
    /// The K-quant format of this type, if it is one.
    pub fn kquant(self) -> Option<crate::kquant::KQuant> {
        use crate::kquant::KQuant;
        match self {
            Self::Q4K => Some(KQuant::Q4K),
            Self::Q5K => Some(KQuant::Q5K),
            Self::Q6K => Some(KQuant::Q6K),
            _ => None,
        }
    }

    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, for the types whose layout this crate knows.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q5_0 => Some((32, 22)),
            Self::Q5_1 => Some((32, 24)),
            Self::Q8_0 => Some((32, 34)),
            Self::Q8_1 => Some((32, 36)),
            Self::Q4K => Some((256, 144)),
            Self::Q5K => Some((256, 176)),
            Self::Q6K => Some((256, 210)),
            Self::Other(_) => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "GGML type {id}"),
            Self::Q4K => f.write_str("Q4_K"),
            Self::Q5K => f.write_str("Q5_K"),
            Self::Q6K => f.write_str("Q6_K"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// UTF-8 text (invalid sequences replaced).
    String(String),
    /// An array of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number (of any sign).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry in the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// Its name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// GGML's `ne`: the fastest-varying dimension first (a PyTorch `[out, in]` weight is
    /// `[in, out]` here).
    pub dims: Vec<u64>,
    /// How its elements are stored.
    pub kind: GgmlType,
    /// Where its bytes start in the file.
    pub start: usize,
    /// How many bytes it takes (0 for a type whose layout is unknown).
    pub len: usize,
}

impl GgufTensor {
    /// The shape in PyTorch's order (slowest-varying dimension first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Its number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file's header: its metadata and tensor directory, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// The file it was read from.
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// The tensors in file order.
    pub tensors: Vec<GgufTensor>,
}

/// A GGUF file, mapped, with its parsed header.
pub struct GgufFile {
    map: MappedFile,
    header: Gguf,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Maps `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self> {
        let map = MappedFile::open(path)?;
        let header = Gguf::parse(&map, path)?;
        Ok(Self { map, header })
    }

    /// The header.
    pub fn header(&self) -> &Gguf {
        &self.header
    }

    /// A tensor's bytes, as stored.
    pub fn data(&self, tensor: &GgufTensor) -> &[u8] {
        self.header.data(&self.map, tensor)
    }
}

impl Gguf {
    /// Reads the header of a GGUF file held in `bytes`; `path` names it in errors.
    ///
    /// Refused as [`WeightsError::InvalidGguf`]: counts and lengths above the limits of
    /// this module (`MAX_*`) or beyond the file, a metadata key given twice (llama.cpp
    /// refuses it too: the first would win silently), two tensors of one name, tensors
    /// whose bytes overlap, lie past the end or are not aligned.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut r = Reader {
            bytes,
            at: 0,
            end: bytes.len(),
            path,
            values: 0,
        };
        if r.take(4)? != MAGIC {
            return Err(r.invalid("not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.invalid(&format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = r.u64()?;
        let metadata_count = r.u64()?;
        r.check_limit(tensor_count, MAX_TENSORS, "tensors")?;
        r.check_limit(metadata_count, MAX_METADATA_ENTRIES, "metadata entries")?;
        // Each entry takes at least this many bytes: more than the file holds is a lie.
        r.check_count(tensor_count, 8 + 4 + 4 + 8, "tensors")?;
        r.check_count(metadata_count, 8 + 4 + 1, "metadata entries")?;
        let metadata = r.metadata(metadata_count)?;
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.invalid("general.alignment is not a power of two up to 1 MiB")),
            },
        };
        let infos = r.tensor_infos(tensor_count)?;
        let data_start = (r.at as u64).next_multiple_of(alignment);
        // Grown as tensors are checked, not reserved from the header's count.
        let mut tensors = Vec::new();
        for TensorInfo {
            name,
            dims,
            kind,
            offset,
        } in infos
        {
            let len =
                stored_len(&dims, kind).map_err(|m| r.invalid(&format!("tensor {name:?}: {m}")))?;
            if offset % alignment != 0 {
                return Err(r.invalid(&format!("tensor {name:?}: offset {offset} is not aligned")));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= bytes.len() as u64 => tensors.push(GgufTensor {
                    name,
                    dims,
                    kind,
                    start: start as usize,
                    len: len as usize,
                }),
                _ => {
                    return Err(r.invalid(&format!(
                        "tensor {name:?} lies past the end of the file (truncated?)"
                    )))
                }
            }
        }
        if let Some((a, b)) = first_overlap(&tensors) {
            return Err(r.invalid(&format!(
                "the data of tensors {:?} and {:?} overlap",
                tensors[a].name, tensors[b].name
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes in `file` (the bytes this header was parsed from).
    pub fn data<'a>(&self, file: &'a [u8], tensor: &GgufTensor) -> &'a [u8] {
        &file[tensor.start..tensor.start + tensor.len]
    }
}

/// The bytes a tensor of GGML dims `dims` and type `kind` takes (0 for a type whose
/// layout is unknown), or why it cannot be stored.
fn stored_len(dims: &[u64], kind: GgmlType) -> std::result::Result<u64, String> {
    let overflow = || "its size overflows".to_string();
    let elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(overflow)?;
    let Some((block, block_bytes)) = kind.block() else {
        return Ok(0);
    };
    if !dims[0].is_multiple_of(block as u64) {
        return Err(format!(
            "{} values per row is not a whole number of {kind} blocks",
            dims[0]
        ));
    }
    (elements / block as u64)
        .checked_mul(block_bytes as u64)
        .ok_or_else(overflow)
}

/// The indices of two tensors whose (non-empty) byte ranges overlap, if any do.
fn first_overlap(tensors: &[GgufTensor]) -> Option<(usize, usize)> {
    let mut ranges: Vec<(usize, usize, usize)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.len > 0)
        .map(|(i, t)| (t.start, t.start + t.len, i))
        .collect();
    ranges.sort_unstable();
    ranges
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| (w[0].2, w[1].2))
}

/// A tensor's entry as read, before it is checked against the file.
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    kind: GgmlType,
    /// From the start of the data.
    offset: u64,
}

/// A cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Reads stop here: the end of the file, or of the metadata's byte budget.
    end: usize,
    path: &'a Path,
    /// Metadata values read so far.
    values: u64,
}

impl<'a> Reader<'a> {
    fn invalid(&self, reason: &str) -> WeightsError {
        WeightsError::InvalidGguf {
            path: self.path.to_path_buf(),
            message: format!("{reason} (at byte {})", self.at),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.end);
        let Some(end) = end else {
            return Err(self.overrun(n as u64, "the file ends early (truncated?)"));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Refuses a count above this module's `limit` for `what`.
    fn check_limit(&self, count: u64, limit: u64, what: &str) -> Result<()> {
        if count > limit {
            return Err(self.invalid(&format!("{count} {what} (more than the limit of {limit})")));
        }
        Ok(())
    }

    /// Refuses a count of items of at least `min_bytes` each that the rest cannot hold.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        let needed = count.saturating_mul(min_bytes);
        if needed > (self.end - self.at) as u64 {
            return Err(self.overrun(needed, &format!("{count} {what} cannot fit in the file")));
        }
        Ok(())
    }

    /// The error for `needed` bytes past [`end`](Self::end): the metadata's budget when
    /// the file holds them, else `beyond_file`.
    fn overrun(&self, needed: u64, beyond_file: &str) -> WeightsError {
        let in_file = needed <= (self.bytes.len() - self.at) as u64;
        if self.end < self.bytes.len() && in_file {
            self.invalid(&format!(
                "the metadata takes more than {MAX_METADATA_BYTES} bytes"
            ))
        } else {
            self.invalid(beyond_file)
        }
    }

    /// A string of at most `limit` bytes.
    fn string(&mut self, limit: u64, what: &str) -> Result<String> {
        let len = self.u64()?;
        self.check_limit(len, limit, &format!("bytes in {what}"))?;
        self.check_count(len, 1, "string bytes")?;
        let bytes = self.take(len as usize)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// `count` metadata entries, in at most [`MAX_METADATA_BYTES`], each key once.
    fn metadata(&mut self, count: u64) -> Result<Vec<(String, GgufValue)>> {
        let file_end = self.end;
        self.end = self
            .at
            .saturating_add(MAX_METADATA_BYTES as usize)
            .min(file_end);
        let mut keys = std::collections::HashSet::new();
        let mut metadata = Vec::new();
        for _ in 0..count {
            let key = self.string(MAX_STRING_BYTES, "a metadata key")?;
            if !keys.insert(key.clone()) {
                return Err(self.invalid(&format!("metadata key {key:?} appears twice")));
            }
            let kind = self.u32()?;
            let value = self.value(kind, 0)?;
            metadata.push((key, value));
        }
        self.end = file_end;
        Ok(metadata)
    }

    /// The tensor directory, each name once.
    fn tensor_infos(&mut self, count: u64) -> Result<Vec<TensorInfo>> {
        let mut names = std::collections::HashSet::new();
        let mut infos = Vec::new();
        for _ in 0..count {
            let name = self.string(MAX_TENSOR_NAME_BYTES, "a tensor name")?;
            if !names.insert(name.clone()) {
                return Err(self.invalid(&format!("tensor {name:?} appears twice")));
            }
            let n_dims = self.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(self.invalid(&format!("tensor {name:?} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| self.u64())
                .collect::<Result<Vec<_>>>()?;
            let kind = GgmlType::from_id(self.u32()?);
            let offset = self.u64()?;
            infos.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
            });
        }
        Ok(infos)
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<GgufValue> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.invalid(&format!("more than {MAX_METADATA_VALUES} metadata values")));
        }
        Ok(match kind {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => return Err(self.invalid(&format!("a boolean of value {other}"))),
            },
            8 => GgufValue::String(self.string(MAX_STRING_BYTES, "a metadata string")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.invalid("arrays nested too deep"));
                }
                let item = self.u32()?;
                let count = self.u64()?;
                self.check_limit(count, MAX_ARRAY_ITEMS, "array items")?;
                // Every item takes at least one byte (an empty string takes eight).
                self.check_count(count, if item == 8 { 8 } else { 1 }, "array items")?;
                // Grown as items are read, not reserved from the count.
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(item, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.invalid(&format!("unknown metadata type {other}"))),
        })
    }
}
