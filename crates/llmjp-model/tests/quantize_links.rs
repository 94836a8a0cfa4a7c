//! `quantize_checkpoint` never loses data: an output that shares any file with its input
//! (links either way, hard links, the same folder under another name) is refused before
//! anything is written; links in the output are replaced, never written through; a failed
//! run leaves no half-written file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use llmjp_model::quantize::quantize_checkpoint;
use llmjp_model::ModelError;
use llmjp_weights::quant::BlockFormat;
use llmjp_weights::WeightsError;

/// A fresh folder under the system's temporary folder.
fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "llmjp-quantize-links-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A writable copy of the bf16 Llama fixture with a tokenizer-like side file.
fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    let fixture = llmjp_testdata::fixture_dir("llama-mha-bf16");
    for entry in fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, src.join(path.file_name().unwrap())).unwrap();
    }
    fs::write(src.join("tokenizer_config.json"), r#"{"bos_token": "<s>"}"#).unwrap();
    src
}

/// Every file's bytes in a folder (links followed), by name.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

fn quantize(src: &Path, out: &Path) -> Result<(), ModelError> {
    quantize_checkpoint(src, BlockFormat::Q8_0, out, &mut |_, _| {}).map(|_| ())
}

fn assert_shared_refused(case: &str, result: Result<(), ModelError>) {
    assert!(
        matches!(
            result,
            Err(ModelError::Weights(WeightsError::SharedOutput { .. }))
        ),
        "{case}: {result:?}"
    );
}

#[test]
fn an_output_of_links_to_the_source_is_refused_and_the_source_kept() {
    let dir = temp("links-out");
    let src = source(&dir);
    let before = contents(&src);
    // What an older `huggingface-cli download --local-dir` leaves: links to the files.
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    for name in before.keys() {
        symlink(src.join(name), out.join(name)).unwrap();
    }
    assert_shared_refused("links in --out", quantize(&src, &out));
    assert_eq!(contents(&src), before);

    // One link is enough, whatever its name.
    let out = dir.join("out-one");
    fs::create_dir_all(&out).unwrap();
    symlink(src.join("tokenizer_config.json"), out.join("notes.txt")).unwrap();
    assert_shared_refused("one link in --out", quantize(&src, &out));
    // Hard links share the inode.
    let out = dir.join("out-hard");
    fs::create_dir_all(&out).unwrap();
    fs::hard_link(src.join("config.json"), out.join("config.json")).unwrap();
    assert_shared_refused("a hard link in --out", quantize(&src, &out));
    assert_eq!(contents(&src), before);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_source_made_of_links_into_the_output_is_refused_and_the_weights_kept() {
    let dir = temp("links-src");
    let real = source(&dir);
    let before = contents(&real);
    // `--model` is a symlinked view of `--out`.
    let view = dir.join("view");
    fs::create_dir_all(&view).unwrap();
    for name in before.keys() {
        symlink(real.join(name), view.join(name)).unwrap();
    }
    assert_shared_refused("--model linking into --out", quantize(&view, &real));
    // The same folder under another name, and a link to the folder.
    assert_shared_refused("--out is --model", quantize(&real, &real));
    let alias = dir.join("alias");
    symlink(&real, &alias).unwrap();
    assert_shared_refused("--out links to --model", quantize(&real, &alias));
    assert_shared_refused(
        "--out is --model with a dot",
        quantize(&real, &real.join(".")),
    );
    assert_eq!(contents(&real), before);
    // Nothing was written into the source: no temporary files either.
    let names: Vec<String> = fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), before.len(), "{names:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn links_in_the_output_to_other_files_are_replaced_not_written_through() {
    let dir = temp("replace");
    let src = source(&dir);
    let elsewhere = dir.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("precious.json"), "keep me").unwrap();
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        symlink(elsewhere.join("precious.json"), out.join(name)).unwrap();
    }
    quantize(&src, &out).unwrap();
    assert_eq!(
        fs::read_to_string(elsewhere.join("precious.json")).unwrap(),
        "keep me"
    );
    for name in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        let meta = fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.is_file(), "{name} is still a link");
    }
    assert_eq!(
        fs::read(out.join("tokenizer_config.json")).unwrap(),
        fs::read(src.join("tokenizer_config.json")).unwrap()
    );
    let config = fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("q8_0"), "{config}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_run_leaves_nothing_half_made() {
    let dir = temp("failed");
    let src = source(&dir);
    // A side file whose read fails (reading /proc/self/mem at offset 0 is an I/O error for
    // everyone, root included): the run fails after the weights were written.
    symlink("/proc/self/mem", src.join("unreadable.json")).unwrap();
    let out = dir.join("out");
    let result = quantize(&src, &out);
    assert!(
        matches!(result, Err(ModelError::Weights(WeightsError::Io { .. }))),
        "{result:?}"
    );
    // Whatever was renamed into place, config.json (written last) is not: the folder is
    // not taken for a model, and no temporary file is left.
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "config.json"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with(".llmjp-tmp-")),
        "{names:?}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
