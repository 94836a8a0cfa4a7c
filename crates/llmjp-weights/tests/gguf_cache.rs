//! The cache of imported GGUF files (`gguf::import::cached_in`): keyed by content, never
//! left with a failed import's staging folder, safe for concurrent imports; and `*.gguf`
//! paths that are not regular files are typed errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use llmjp_weights::gguf::import::cached_in;
use llmjp_weights::{Checkpoint, Layout, WeightsError};

mod gguf_support;

use gguf_support::{metadata, model, temp, tensors, HIDDEN, VOCAB};

/// Imports `gguf` into the cache `cache` with the GGUF's own tokenizer.
fn cached(cache: &Path, gguf: &Path) -> Result<PathBuf, WeightsError> {
    cached_in(cache, gguf, None, &mut |_, _| {})
}

/// The embedding the imported folder `dir` holds.
fn embedding(dir: &Path) -> Vec<f32> {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let shape = [VOCAB, HIDDEN as usize];
    checkpoint
        .read("model.embed_tokens.weight", &shape, Layout::AsStored)
        .unwrap()
}

/// The staging folders left in the cache.
fn staging_left(cache: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cache.join("gguf")) else {
        return vec![];
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-"))
        .collect()
}

#[test]
fn two_files_of_one_name_size_and_time_do_not_share_a_folder() {
    let dir = temp("cache-collision");
    let cache = dir.join("cache");
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut folders = vec![];
    for (sub, seed) in [("a", 1), ("b", 2)] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        let path = dir.join(sub).join("model.gguf");
        fs::write(&path, model(seed)).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(time)
            .unwrap();
        folders.push((path.clone(), cached(&cache, &path).unwrap()));
    }
    let [(a, a_dir), (b, b_dir)] = &folders[..] else {
        unreachable!()
    };
    assert_eq!(
        fs::metadata(a).unwrap().len(),
        fs::metadata(b).unwrap().len()
    );
    assert_ne!(a_dir, b_dir);
    assert_ne!(embedding(a_dir), embedding(b_dir));
    // Each file again: its own folder, reused.
    assert_eq!(&cached(&cache, a).unwrap(), a_dir);
    assert_eq!(&cached(&cache, b).unwrap(), b_dir);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_import_leaves_no_staging_folder() {
    let dir = temp("cache-failure");
    let cache = dir.join("cache");
    let path = dir.join("model.gguf");
    // Refused before anything is written (a layer past the last) and while writing (a
    // Q8_0 tensor that is not a matrix, after others were added).
    let mut extra = metadata(1, VOCAB);
    tensors(&mut extra, 2, 3);
    let mut q8 = metadata(1, VOCAB);
    let embedding_values = gguf_support::values(HIDDEN * VOCAB as u64, 1);
    q8.tensor(
        "token_embd.weight",
        &[HIDDEN, VOCAB as u64],
        0,
        &embedding_values,
    );
    q8.tensor("output_norm.weight", &[HIDDEN], 8, &[0; 34]);
    for (bytes, needle) in [
        (extra.bytes(), "not a tensor of this model"),
        (q8.bytes(), "not a matrix"),
    ] {
        fs::write(&path, &bytes).unwrap();
        let err = cached(&cache, &path).unwrap_err();
        assert!(matches!(err, WeightsError::InvalidGguf { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(staging_left(&cache), Vec::<String>::new(), "{needle}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// Sets a folder's modification time `age` in the past.
fn age_folder(path: &Path, age: Duration) {
    let time = SystemTime::now() - age;
    fs::File::open(path).unwrap().set_modified(time).unwrap();
}

// Unix: a dead process is told from a live one by kill(pid, 0).
#[cfg(unix)]
#[test]
fn stale_staging_folders_are_removed_and_live_ones_kept() {
    let dir = temp("cache-stale");
    let cache = dir.join("cache");
    let root = cache.join("gguf");
    // A process that has exited: its id is free.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    let hour = Duration::from_secs(3600);
    let cases = [
        (format!(".partial-{dead}-0-dead-old"), hour, false),
        (
            format!(".partial-{dead}-1-dead-fresh"),
            Duration::ZERO,
            true,
        ),
        (format!(".partial-{live}-0-live-old"), hour, true),
        (format!(".partial-{live}-1-live-ancient"), 25 * hour, false),
        ("not-staging".to_string(), 25 * hour, true),
    ];
    for (name, age, _) in &cases {
        let folder = root.join(name);
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("model.safetensors"), b"partial").unwrap();
        age_folder(&folder, *age);
    }
    let path = dir.join("model.gguf");
    fs::write(&path, model(4)).unwrap();
    cached(&cache, &path).unwrap();
    for (name, _, kept) in &cases {
        assert_eq!(root.join(name).exists(), *kept, "{name}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_imports_of_one_file_all_succeed() {
    let dir = temp("cache-concurrent");
    let cache = dir.join("cache");
    let path = dir.join("model.gguf");
    fs::write(&path, model(5)).unwrap();
    let start = std::sync::Barrier::new(4);
    let folders: Vec<PathBuf> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    cached(&cache, &path)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect()
    });
    assert!(folders.iter().all(|f| f == &folders[0]), "{folders:?}");
    assert_eq!(embedding(&folders[0]).len(), VOCAB * HIDDEN as usize);
    assert_eq!(staging_left(&cache), Vec::<String>::new());
    fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn gguf_paths_that_are_not_regular_files_are_typed_errors() {
    use std::os::unix::ffi::OsStrExt;

    let dir = temp("cache-paths");
    let fifo = dir.join("x.gguf");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let broken = dir.join("models").join("broken.gguf");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.gguf"), &broken).unwrap();
    let options = llmjp_weights::HubOptions {
        offline: true,
        ..Default::default()
    };
    let resolve = |path: &Path| llmjp_weights::resolve_model(path.to_str().unwrap(), &options);
    match resolve(&fifo) {
        Err(WeightsError::NotAFile { path }) => assert_eq!(path, fifo),
        other => panic!("a FIFO: {other:?}"),
    }
    match resolve(&broken) {
        Err(WeightsError::NotFound { path }) => assert_eq!(path, broken),
        other => panic!("a broken link: {other:?}"),
    }
    assert!(matches!(
        cached(&dir.join("cache"), &fifo),
        Err(WeightsError::NotAFile { .. })
    ));
    assert!(matches!(
        cached(&dir.join("cache"), &broken),
        Err(WeightsError::NotFound { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}
