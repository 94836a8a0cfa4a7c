//! The cache of imported GGUF files ([`cached_in`](super::import::cached_in)): each file's
//! folder is named by a fingerprint of its content, filled in a staging folder of its own
//! and renamed into place when complete.
//!
//! - [`fingerprint`]: FNV-1a 64 over the file's length, its modification time in
//!   nanoseconds, its first 16 MiB (header, metadata and tensor directory of any real
//!   model) and 64 samples of 64 KiB spread over the rest, the last bytes included: two
//!   files of one name and size do not share a folder, and a 78 GB file costs 20 MiB of
//!   reads.
//! - [`Staging`]: a uniquely named folder (`.partial-{pid}-{n}-…`), removed when dropped
//!   unpublished, so a failed import leaves nothing behind; [`Staging::publish`] takes a
//!   complete folder already in place (another process won the race) as success.
//! - [`remove_stale`]: staging folders of processes killed mid-import, removed once their
//!   process is gone and they are untouched for [`STALE_DEAD`], or untouched for
//!   [`STALE_ANY`] whatever their process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::{Result, WeightsError};

/// The marker written last into a complete folder.
pub(crate) const COMPLETE: &str = ".complete";
/// Staging folders' names start with this.
const STAGING_PREFIX: &str = ".partial-";
/// Bytes hashed from the start of the file.
const HEAD_BYTES: u64 = 16 << 20;
/// Samples hashed from the rest, and their length.
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 64 << 10;
/// A staging folder whose process is gone is removed once untouched this long (a margin
/// for processes of another PID namespace sharing the cache).
pub(crate) const STALE_DEAD: Duration = Duration::from_secs(10 * 60);
/// A staging folder untouched this long is removed whatever its process.
pub(crate) const STALE_ANY: Duration = Duration::from_secs(24 * 60 * 60);

/// FNV-1a, 64 bits: a stable hash (the same in every build and version).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// A fingerprint of the regular file at `path` (see the module docs).
pub(crate) fn fingerprint(path: &Path) -> Result<u64> {
    let io = |e| WeightsError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let len = meta.len();
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hash = Fnv1a::new();
    hash.update(&len.to_le_bytes());
    hash.update(&modified.to_le_bytes());
    let mut buffer = Vec::new();
    let mut read = |at: u64, n: u64, hash: &mut Fnv1a| -> std::io::Result<()> {
        buffer.clear();
        file.seek(SeekFrom::Start(at))?;
        (&mut file).take(n).read_to_end(&mut buffer)?;
        hash.update(&buffer);
        Ok(())
    };
    read(0, HEAD_BYTES.min(len), &mut hash).map_err(io)?;
    if len > HEAD_BYTES {
        let rest = len - HEAD_BYTES;
        for i in 0..SAMPLES {
            // Evenly spread; the last sample ends at the end of the file.
            let at = HEAD_BYTES + (rest.saturating_sub(SAMPLE_BYTES)) * i / (SAMPLES - 1);
            read(at, SAMPLE_BYTES.min(len - at), &mut hash).map_err(io)?;
        }
    }
    Ok(hash.finish())
}

/// Whether `dir` is a complete imported folder.
pub(crate) fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

/// A name in `root` no other staging folder has: `.partial-{pid}-{n}-{label}`.
fn unique_name(root: &Path, label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    root.join(format!(
        "{STAGING_PREFIX}{}-{n}-{label}",
        std::process::id()
    ))
}

/// A staging folder, removed when dropped unless published.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    published: bool,
}

impl Staging {
    /// Creates a new, empty staging folder in `root` (created if needed).
    pub(crate) fn create(root: &Path, label: &str) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| WeightsError::write(root, e))?;
        loop {
            let path = unique_name(root, label);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Self {
                        path,
                        published: false,
                    })
                }
                // Left by an earlier process of the same id: take another number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(WeightsError::write(&path, e)),
            }
        }
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the folder complete and renames it to `dir`. When `dir` is already complete
    /// (another import of the same file finished first), that is success and this copy
    /// is removed; an incomplete folder in the way is moved aside and removed.
    pub(crate) fn publish(mut self, dir: &Path) -> Result<()> {
        let marker = self.path.join(COMPLETE);
        std::fs::write(&marker, dir.display().to_string())
            .map_err(|e| WeightsError::write(&marker, e))?;
        let first = match std::fs::rename(&self.path, dir) {
            Ok(()) => {
                self.published = true;
                return Ok(());
            }
            Err(_) if is_complete(dir) => return Ok(()),
            Err(e) => e,
        };
        if std::fs::symlink_metadata(dir).is_err() {
            return Err(WeightsError::write(dir, first));
        }
        let root = dir.parent().unwrap_or(Path::new("."));
        let aside = unique_name(root, "replaced");
        if std::fs::rename(dir, &aside).is_ok() {
            let _ = std::fs::remove_dir_all(&aside);
        }
        match std::fs::rename(&self.path, dir) {
            Ok(()) => {
                self.published = true;
                Ok(())
            }
            Err(_) if is_complete(dir) => Ok(()),
            Err(e) => Err(WeightsError::write(dir, e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes the staging folders in `root` left by imports that died (see the module docs);
/// best effort: what cannot be read or removed is left.
pub(crate) fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok());
        let Some(age) = age else { continue };
        let dead = pid.is_some_and(|pid| !process_exists(pid));
        if age > STALE_ANY || (dead && age > STALE_DEAD) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a process of id `pid` exists (on Unix, by `kill(pid, 0)`; elsewhere assumed).
fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            // 0 and negative ids name process groups, not a process.
            return true;
        }
        // SAFETY: signal 0 sends nothing; it only checks that `pid` can be signalled.
        let status = unsafe { libc::kill(pid, 0) };
        status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
