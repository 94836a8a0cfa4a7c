//! Snapshot tests: every conversation in `snapshots/cases.json`, rendered with every template
//! in `templates/`, equals what transformers' `apply_chat_template` rendered
//! (`xtask/golden/chat_golden.py`): one snapshot file per template and conversation.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use llmjp_chat::{ChatError, ChatTemplate, RenderOptions};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Value,
    add_generation_prompt: bool,
    tools: Option<Vec<Value>>,
    extra: Map<String, Value>,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The special tokens of the llm-jp-3 tokenizer configuration, which the golden renders used.
fn llm_jp_special_tokens() -> BTreeMap<String, String> {
    [
        ("bos_token", "<s>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("pad_token", "<PAD|LLM-jp>"),
        ("sep_token", "<SEP|LLM-jp>"),
        ("cls_token", "<CLS|LLM-jp>"),
        ("mask_token", "<MASK|LLM-jp>"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn cases() -> Vec<Case> {
    let text = fs::read_to_string(tests_dir().join("snapshots/cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

fn options(case: &Case) -> RenderOptions {
    RenderOptions {
        add_generation_prompt: case.add_generation_prompt,
        tools: case.tools.clone(),
        documents: None,
        extra: case.extra.clone(),
    }
}

/// Renders every case with `template` and compares with the snapshots in `folder`; returns
/// one line per mismatch.
fn check_template(template: &ChatTemplate, folder: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases() {
        let rendered = template.render_json(&case.messages, &options(&case));
        let ok_path = folder.join(format!("{}.txt", case.name));
        let err_path = folder.join(format!("{}.err", case.name));
        let label = format!(
            "{}/{}",
            folder.file_name().unwrap().to_string_lossy(),
            case.name
        );
        match (
            rendered,
            fs::read_to_string(&ok_path),
            fs::read_to_string(&err_path),
        ) {
            (Ok(text), Ok(expected), _) if text == expected => {}
            (Ok(text), Ok(expected), _) => failures.push(format!(
                "{label}:\n--- ours\n{text}\n--- transformers\n{expected}"
            )),
            (Err(e), _, Ok(expected)) => {
                let message = match &e {
                    ChatError::Raised { message } => message.clone(),
                    ChatError::InvalidInput(message) => message.clone(),
                    other => other.to_string(),
                };
                if message != expected {
                    failures.push(format!(
                        "{label}: error {message:?}, transformers {expected:?}"
                    ));
                }
            }
            (Ok(text), _, Ok(expected)) => failures.push(format!(
                "{label}: rendered {text:?}, transformers raised {expected:?}"
            )),
            (Err(e), _, _) => failures.push(format!("{label}: {e}")),
            (Ok(_), Err(_), Err(_)) => failures.push(format!("{label}: no snapshot")),
        }
    }
    failures
}

#[test]
fn there_are_enough_conversations() {
    assert!(cases().len() >= 20);
}

#[test]
fn every_template_matches_transformers() {
    let mut failures = Vec::new();
    let mut templates = 0;
    for entry in fs::read_dir(tests_dir().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let source = fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let template = ChatTemplate::new(&source, llm_jp_special_tokens()).unwrap();
        failures.extend(check_template(
            &template,
            &tests_dir().join("snapshots").join(name),
        ));
        templates += 1;
    }
    assert!(templates >= 3);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn built_in_template_matches_transformers() {
    let failures = check_template(
        &ChatTemplate::llm_jp(),
        &tests_dir().join("snapshots/llm-jp-3"),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn built_in_template_is_the_official_one() {
    let official = fs::read_to_string(tests_dir().join("templates/llm-jp-3.jinja")).unwrap();
    assert_eq!(llmjp_chat::LLM_JP_TEMPLATE, official);
}
