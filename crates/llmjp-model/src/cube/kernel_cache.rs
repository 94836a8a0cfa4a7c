//! Persistent caches of compiled kernels and autotune results, so that only the first run
//! on a machine compiles (cubecl 0.10's `[compilation] cache` and `[autotune] cache`, set
//! from code: its default location is found by walking up to a `Cargo.toml`, which an
//! installed binary does not have).
//!
//! The folder is, in order: the one passed to [`configure`], `$LLMJP_KERNEL_CACHE` (`off`
//! turns the caches off), or `cubecl/` in llmjp's cache folder (`$LLMJP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/llmjp`, else `~/.cache/llmjp`). A folder written by another version is
//! emptied first; a folder that cannot be made, or a cache that cannot be read, costs only
//! the compilations (cubecl skips corrupt entries, and a cache whose table of contents
//! points at missing files is emptied before cubecl sees it).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cubecl::config::cache::CacheConfig;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

/// The environment variable naming the kernel cache folder (`off` disables it).
pub const KERNEL_CACHE_ENV: &str = "LLMJP_KERNEL_CACHE";

/// What a version stamp file in the cache folder holds: caches of another version are
/// emptied.
const STAMP: &str = concat!("llmjp-model ", env!("CARGO_PKG_VERSION"), ", cubecl 0.10\n");
const STAMP_FILE: &str = "llmjp-kernel-cache";

/// How the kernel caches were set up for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCache {
    /// Compiled kernels and autotune results persist in this folder. `cold` when it held
    /// none before (this run compiles them).
    Dir {
        /// The folder.
        path: PathBuf,
        /// Whether it was empty (a first run: kernels compile as they are first used).
        cold: bool,
    },
    /// Turned off (`LLMJP_KERNEL_CACHE=off`): every process compiles its kernels.
    Off,
    /// Not in effect, and why (the folder could not be made, or cubecl was configured
    /// before): every process compiles its kernels.
    Unavailable(String),
}

static CONFIGURED: OnceLock<KernelCache> = OnceLock::new();

/// Sets up the kernel caches once per process, before the first kernel runs: in `dir`, else
/// where the module docs say. Later calls return the first call's result. Never fails: a
/// cache that cannot be used is reported in the result, and kernels then compile as usual.
pub fn configure(dir: Option<&Path>) -> &'static KernelCache {
    CONFIGURED.get_or_init(|| {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => match std::env::var_os(KERNEL_CACHE_ENV).filter(|v| !v.is_empty()) {
                Some(v) if v == "off" => return KernelCache::Off,
                Some(v) => PathBuf::from(v),
                None => llmjp_weights::gguf::import::cache_root().join("cubecl"),
            },
        };
        match prepare(&dir) {
            Ok(cold) => apply(&dir, cold),
            Err(e) => KernelCache::Unavailable(format!("{}: {e}", dir.display())),
        }
    })
}

/// The caches' state, if [`configure`] ran.
pub fn configured() -> Option<&'static KernelCache> {
    CONFIGURED.get()
}

/// Makes a cache folder ready for use ([`configure`] calls it): makes it, empties it when
/// another version wrote it or its compilation cache names missing files (cubecl would
/// panic on those), and returns whether it holds no compiled kernels (a cold start).
pub fn prepare(dir: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let stamp = dir.join(STAMP_FILE);
    let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s == STAMP);
    if !current || !consistent(&dir.join("compilation")) {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        // Written new and renamed into place, as every file llmjp writes.
        llmjp_weights::atomic::write_new(&stamp, STAMP.as_bytes())
            .map_err(std::io::Error::other)?;
    }
    Ok(!has_files(&dir.join("compilation")))
}

/// Installs the caches in cubecl's configuration (keeping what `cubecl.toml` and the
/// `CUBECL_*` variables say otherwise).
fn apply(dir: &Path, cold: bool) -> KernelCache {
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(dir.join("compilation")));
    config.autotune.cache = CacheConfig::File(dir.join("autotune"));
    // cubecl refuses (panics) if its configuration was already set or read.
    match std::panic::catch_unwind(|| CubeClRuntimeConfig::set(config)) {
        Ok(()) => KernelCache::Dir {
            path: dir.to_path_buf(),
            cold,
        },
        Err(_) => KernelCache::Unavailable(
            "cubecl's configuration was read before the kernel cache was set up".into(),
        ),
    }
}

/// Whether every table of contents (`toc*` files) under `dir` names chunk files that exist
/// beside it (cubecl panics on one that does not). Entries are JSON lines naming a `.cbor`
/// chunk.
fn consistent(dir: &Path) -> bool {
    let mut ok = true;
    visit(dir, &mut |path| {
        let is_toc = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("toc"));
        let Some(folder) = path.parent().filter(|_| is_toc) else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            ok = false;
            return;
        };
        for chunk in text.split('"').filter(|s| s.ends_with(".cbor")) {
            if !folder.join(chunk).is_file() {
                ok = false;
            }
        }
    });
    ok
}

fn has_files(dir: &Path) -> bool {
    let mut any = false;
    visit(dir, &mut |_| any = true);
    any
}

/// Calls `f` on every file under `dir` (no links followed).
fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            visit(&entry.path(), f);
        } else if kind.is_file() {
            f(&entry.path());
        }
    }
}
