//! Resolving `--model`: folders, Hub ids, the offline cache, and no network.

use std::fs;
use std::path::PathBuf;

use llmjp_weights::{resolve_model, resolve_tokenizer, HubId, HubOptions, WeightsError};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmjp-hub-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn hub_ids_parse() {
    let id = HubId::parse("llm-jp/llm-jp-3.1-1.8b-instruct4").unwrap();
    assert_eq!(id.repo, "llm-jp/llm-jp-3.1-1.8b-instruct4");
    assert_eq!(id.revision, None);
    let id = HubId::parse("llm-jp/llm-jp-3.1-1.8b-instruct4@v1.0").unwrap();
    assert_eq!(id.revision.as_deref(), Some("v1.0"));
    for bad in ["", "name", "a/b/c", "/b", "a/", "a/b@", "../x", "a b/c"] {
        assert_eq!(HubId::parse(bad), None, "{bad}");
    }
}

#[test]
fn a_local_folder_needs_no_network() {
    let dir = temp("local");
    let resolved = resolve_model(dir.to_str().unwrap(), &HubOptions::default()).unwrap();
    assert_eq!(resolved, dir);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn neither_folder_nor_hub_id() {
    let err = resolve_model("./no/such/folder", &HubOptions::default()).unwrap_err();
    assert!(
        matches!(err, WeightsError::InvalidModelSpec { .. }),
        "{err}"
    );
}

/// A cache laid out as Python's huggingface_hub lays it out.
fn fake_cache(name: &str, with_weights: bool) -> PathBuf {
    let cache = temp(name);
    let repo = cache.join("models--llm-jp--tiny");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    fs::write(snapshot.join("config.json"), "{}").unwrap();
    fs::write(snapshot.join("tokenizer.json"), "{}").unwrap();
    if with_weights {
        fs::write(snapshot.join("model.safetensors"), "x").unwrap();
    }
    cache
}

#[test]
fn offline_mode_uses_the_cache() {
    let cache = fake_cache("cache-full", true);
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: true,
        ..HubOptions::default()
    };
    let folder = resolve_model("llm-jp/tiny", &options).unwrap();
    assert_eq!(
        folder,
        cache.join("models--llm-jp--tiny/snapshots/0123456789abcdef")
    );
    assert!(folder.join("config.json").is_file());

    let err = resolve_model("llm-jp/other", &options).unwrap_err();
    assert!(matches!(err, WeightsError::NotCached { .. }), "{err}");
    assert!(err.to_string().contains("local model folder"));
    fs::remove_dir_all(cache).unwrap();
}

#[test]
fn tokenizer_files_alone_need_no_weights() {
    let cache = fake_cache("cache-tokenizer", false);
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: true,
        ..HubOptions::default()
    };
    let folder = resolve_tokenizer("llm-jp/tiny", &options).unwrap();
    assert!(folder.join("tokenizer.json").is_file());
    fs::remove_dir_all(cache).unwrap();
}

#[test]
fn offline_mode_reports_missing_weights() {
    let cache = fake_cache("cache-partial", false);
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: true,
        ..HubOptions::default()
    };
    let err = resolve_model("llm-jp/tiny", &options).unwrap_err();
    assert!(
        matches!(&err, WeightsError::NotCached { file, .. } if file == "model.safetensors"),
        "{err}"
    );
    fs::remove_dir_all(cache).unwrap();
}

#[test]
fn no_network_is_a_clear_error() {
    let cache = temp("nonet");
    let options = HubOptions {
        cache_dir: Some(cache.clone()),
        // Nothing listens on port 9 of the loopback address: the connection is refused.
        endpoint: Some("http://127.0.0.1:9".into()),
        progress: false,
        ..HubOptions::default()
    };
    let err = resolve_model("llm-jp/llm-jp-3.1-1.8b-instruct4", &options).unwrap_err();
    assert!(matches!(err, WeightsError::Hub { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("config.json"), "{message}");
    assert!(message.contains("local model folder"), "{message}");
    fs::remove_dir_all(cache).unwrap();
}
