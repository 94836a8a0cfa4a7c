//! Files written new and renamed into place, and the check that an output shares no file
//! with its input.
//!
//! Every file llmjp writes goes through [`NewFile`]: it is created under a fresh hidden name
//! in the target's folder (`O_CREAT | O_EXCL`: never opened through an existing name or
//! link), written, flushed to disk and renamed over the target. A rename replaces the
//! target's *name*: when the target is a symbolic link, the link goes and the file it
//! pointed to is untouched. A write that fails or is dropped unfinished removes its
//! temporary file, so an interrupted write leaves the target as it was.
//!
//! ```
//! use std::io::Write;
//! use llmjp_weights::atomic::{write_new, NewFile};
//! # let dir = std::env::temp_dir().join(format!("llmjp-atomic-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! write_new(&dir.join("a.txt"), b"first")?;
//! let mut file = NewFile::create(&dir.join("a.txt"))?;
//! file.write_all(b"second")?;
//! drop(file); // not committed: a.txt keeps its old content, no temporary file is left
//! assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"first");
//! assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Result, WeightsError};

/// Temporary files' names start with this (hidden) prefix, so that a folder listing shows
/// what they are when a process was killed mid-write.
pub const TEMP_PREFIX: &str = ".llmjp-tmp-";

/// A file being written under a temporary name; [`commit`](Self::commit) renames it into
/// place, dropping it uncommitted removes it.
#[derive(Debug)]
pub struct NewFile {
    temp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<File>>,
}

impl NewFile {
    /// Creates the temporary file for `target` in `target`'s folder.
    pub fn create(target: &Path) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| WeightsError::write(target, std::io::ErrorKind::InvalidInput.into()))?;
        let mut attempt = 0;
        loop {
            let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!(
                "{TEMP_PREFIX}{}-{unique}-{}",
                std::process::id(),
                name.to_string_lossy()
            ));
            match File::options().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self {
                        temp,
                        target: target.to_path_buf(),
                        file: Some(BufWriter::with_capacity(1 << 20, file)),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(WeightsError::write(target, e)),
            }
        }
    }

    /// The file this will become.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, syncs and renames the file over its target.
    pub fn commit(self) -> Result<()> {
        let target = self.target.clone();
        self.commit_as(&target)
    }

    /// Flushes, syncs and renames the file over `target`, a path in the same folder as
    /// the one it was created for (for names known only once everything is written).
    pub fn commit_as(mut self, target: &Path) -> Result<()> {
        let fail = |e| WeightsError::write(target, e);
        let file = self.file.take().expect("a NewFile is committed once");
        let file = file.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        drop(file);
        std::fs::rename(&self.temp, target).map_err(fail)?;
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Write for NewFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open until committed").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file
            .as_mut()
            .expect("open until committed")
            .write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until committed").flush()
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` as a new file renamed over `target`.
pub fn write_new(target: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = NewFile::create(target)?;
    file.write_all(bytes)
        .map_err(|e| WeightsError::write(target, e))?;
    file.commit()
}

/// Copies the regular file `from` as a new file renamed over `to` (never writing through
/// `to`'s existing name).
pub fn copy_new(from: &Path, to: &Path) -> Result<()> {
    let mut source = File::open(from).map_err(|e| WeightsError::io(from, e))?;
    let mut file = NewFile::create(to)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WeightsError::io(from, e)),
        };
        file.write_all(&buffer[..n])
            .map_err(|e| WeightsError::write(to, e))?;
    }
    file.commit()
}

/// A file's identity: device and inode (what a hard link or a symbolic link shares).
type FileId = (u64, u64);

/// The identities of a folder and of every file in it (links followed), to check that an
/// output folder shares nothing with an input one before anything is written.
#[derive(Debug, Default)]
pub struct FolderFiles {
    files: HashMap<FileId, PathBuf>,
}

impl FolderFiles {
    /// The folder `dir` and the entries directly in it. A missing folder has no files.
    pub fn of(dir: &Path) -> Result<Self> {
        let mut files = HashMap::new();
        let Ok(meta) = std::fs::metadata(dir) else {
            return Ok(Self { files });
        };
        files.insert((meta.dev(), meta.ino()), dir.to_path_buf());
        if meta.is_dir() {
            let entries = std::fs::read_dir(dir).map_err(|e| WeightsError::io(dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| WeightsError::io(dir, e))?.path();
                // A broken link shares nothing.
                if let Ok(meta) = std::fs::metadata(&path) {
                    files.entry((meta.dev(), meta.ino())).or_insert(path);
                }
            }
        }
        Ok(Self { files })
    }

    /// The first file of `self` that is also one of `other`'s (the same device and inode,
    /// whatever the names or links): `(ours, theirs)`.
    pub fn shared_with<'a>(&'a self, other: &'a FolderFiles) -> Option<(&'a Path, &'a Path)> {
        let mut shared: Vec<_> = self
            .files
            .iter()
            .filter_map(|(id, ours)| Some((ours.as_path(), other.files.get(id)?.as_path())))
            .collect();
        shared.sort();
        shared.into_iter().next()
    }
}

/// Refuses an output folder `out` that is, or holds any file of, the input folder `src`
/// (the same device and inode: the same folder under another name, hard links, symbolic
/// links either way) — before anything is written.
pub fn refuse_shared_files(src: &Path, out: &Path) -> Result<()> {
    let input = FolderFiles::of(src)?;
    let output = FolderFiles::of(out)?;
    match output.shared_with(&input) {
        None => Ok(()),
        Some((ours, theirs)) => Err(WeightsError::SharedOutput {
            output: ours.to_path_buf(),
            input: theirs.to_path_buf(),
        }),
    }
}
