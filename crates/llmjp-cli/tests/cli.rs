//! The `llmjp` binary, run as a user runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn llmjp(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmjp"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn model() -> Option<String> {
    llmjp_testdata::tokenizer_dir().map(|d: PathBuf| d.to_string_lossy().into_owned())
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A failure is one line on stderr, a non-zero exit and no panic.
fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

const SEED: &str = r#"[{"role": "system", "content": "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"}, {"role": "user", "content": "自然言語処理とは何か"}]"#;

#[test]
fn tokenize_text_prints_ids_and_tokens() {
    let Some(model) = model() else { return };
    let out = stdout(&llmjp(&["tokenize", "--model", &model, "自然言語処理"], ""));
    assert_eq!(
        out,
        "     1  <s>\n 52757  ▁自然\n 75849  言語\n 66692  処理\n"
    );
    let out = stdout(&llmjp(
        &[
            "tokenize",
            "--model",
            &model,
            "--format",
            "json",
            "--no-special",
            "自然言語処理",
        ],
        "",
    ));
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ids"], serde_json::json!([52757, 75849, 66692]));
    assert_eq!(json["tokens"], serde_json::json!(["▁自然", "言語", "処理"]));
}

#[test]
fn tokenize_reads_json_lines_from_stdin() {
    let Some(model) = model() else { return };
    let out = stdout(&llmjp(
        &["tokenize", "--model", &model],
        "\"a b\"\n\n\"\\n日本\"\n",
    ));
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ids"], serde_json::json!([1, 283, 305]));
    assert_eq!(lines[1]["tokens"][0], "<s>");
    let bad = llmjp(&["tokenize", "--model", &model], "not json\n");
    assert_one_line_error(&bad, "standard input line 1");
}

#[test]
fn render_prints_the_prompt_and_its_ids() {
    let Some(model) = model() else { return };
    let out = stdout(&llmjp(
        &["render", "--model", &model, "--messages", "-"],
        SEED,
    ));
    assert_eq!(
        out,
        "<s>以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n"
    );
    let out = stdout(&llmjp(
        &[
            "render",
            "--model",
            &model,
            "--messages",
            "-",
            "--format",
            "json",
        ],
        SEED,
    ));
    let json: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<u64> = serde_json::from_value(json["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 38);
    assert_eq!(ids[..2], [1, 46337]);
    let out = stdout(&llmjp(
        &[
            "render",
            "--model",
            &model,
            "--messages",
            "-",
            "--no-generation-prompt",
        ],
        SEED,
    ));
    assert!(out.ends_with("自然言語処理とは何か"));
}

#[test]
fn render_reads_a_messages_file() {
    let Some(model) = model() else { return };
    let path = std::env::temp_dir().join(format!("llmjp-cli-messages-{}.json", std::process::id()));
    std::fs::write(&path, SEED).unwrap();
    let out = stdout(&llmjp(
        &[
            "render",
            "--model",
            &model,
            "--messages",
            path.to_str().unwrap(),
        ],
        "",
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(out.starts_with("<s>以下は"));
}

#[test]
fn errors_are_one_line() {
    let missing = llmjp(&["tokenize", "--model", "/no/such/model", "x"], "");
    assert_one_line_error(&missing, "tokenizer.json: file not found");
    let Some(model) = model() else { return };
    let bad_json = llmjp(&["render", "--model", &model, "--messages", "-"], "[1");
    assert_one_line_error(&bad_json, "standard input: invalid JSON");
    let not_messages = llmjp(&["render", "--model", &model, "--messages", "-"], "[1]");
    assert_one_line_error(&not_messages, "message 0 is not a JSON object");
    let no_file = llmjp(
        &["render", "--model", &model, "--messages", "/no/such.json"],
        "",
    );
    assert_one_line_error(&no_file, "/no/such.json");
}
