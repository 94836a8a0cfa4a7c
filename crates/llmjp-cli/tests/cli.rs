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
    assert_one_line_error(&missing, "neither a model folder nor a Hub id");
    let empty = std::env::temp_dir();
    let no_tokenizer = llmjp(&["tokenize", "--model", empty.to_str().unwrap(), "x"], "");
    assert_one_line_error(&no_tokenizer, "tokenizer.json: file not found");
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

fn tiny_model() -> String {
    llmjp_testdata::fixture_dir("tiny-llmjp")
        .to_string_lossy()
        .into_owned()
}

/// Runs `llmjp COMMAND --model <tiny-llmjp> --tokenizer <real tokenizer> ARGS...`, or `None`
/// (the test skips) without the real tokenizer.
fn on_tiny(command: &str, args: &[&str], stdin: &str) -> Option<Output> {
    let tokenizer = model()?;
    let tiny = tiny_model();
    let base = [
        command,
        "--model",
        tiny.as_str(),
        "--tokenizer",
        tokenizer.as_str(),
    ];
    Some(llmjp(&[&base[..], args].concat(), stdin))
}

/// A failure of a model command: exactly one `error:` line (after the line that says which
/// device was chosen), a non-zero exit and no panic.
fn assert_one_error_line(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn tiny_reference() -> Value {
    let path = llmjp_testdata::fixture_dir("tiny-llmjp").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn generate_json_greedy_equals_transformers() {
    let reference = tiny_reference();
    let case = &reference["cases"][0];
    let n = case["generated_ids"].as_array().unwrap().len().to_string();
    let args = [
        "--prompt",
        "自然言語処理とは何か",
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--max-new-tokens",
        &n,
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "--format",
        "json",
    ];
    let Some(output) = on_tiny("generate", &args, "") else {
        return;
    };
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["prompt_ids"], case["prompt_ids"]);
    assert_eq!(json["generated_ids"], case["generated_ids"]);
    assert_eq!(json["text"], case["text"]);
    assert_eq!(json["finish_reason"], "length");
    for key in ["load_s", "prefill_tok_s", "decode_tok_s"] {
        assert!(json["timings"][key].as_f64().unwrap() > 0.0, "{key}");
    }
}

#[test]
fn generate_raw_from_stdin_with_the_default_penalty() {
    let reference = tiny_reference();
    // The raw case with repetition penalty 1.5 (transformers' greedy applies it too).
    let case = &reference["cases"][3];
    assert_eq!(case["repetition_penalty"], 1.5);
    let args = [
        "--raw",
        "--temperature",
        "0",
        "--repetition-penalty",
        "1.5",
        "--max-new-tokens",
        "20",
        "--format",
        "json",
    ];
    let Some(output) = on_tiny("generate", &args, "日本の首都は") else {
        return;
    };
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["generated_ids"], case["generated_ids"]);
}

#[test]
fn generate_text_streams_and_summarises_on_stderr() {
    let args = [
        "--prompt",
        "こんにちは",
        "--max-new-tokens",
        "6",
        "--seed",
        "5",
    ];
    let Some(first) = on_tiny("generate", &args, "") else {
        return;
    };
    let text = stdout(&first);
    assert!(text.ends_with('\n'));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("on cpu in bf16"), "{stderr}");
    assert!(
        stderr.contains("[6 tokens, finish: length, prefill"),
        "{stderr}"
    );
    // Same seed, same text.
    assert_eq!(stdout(&on_tiny("generate", &args, "").unwrap()), text);
}

#[test]
fn generate_stops_at_stop_strings() {
    let reference = tiny_reference();
    let full = reference["cases"][0]["text"].as_str().unwrap();
    let stop: String = full.chars().skip(5).take(2).collect();
    let args = [
        "--prompt",
        "自然言語処理とは何か",
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--stop",
        &stop,
        "--format",
        "json",
    ];
    let Some(output) = on_tiny("generate", &args, "") else {
        return;
    };
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["finish_reason"], "stop");
    assert_eq!(
        json["text"].as_str().unwrap(),
        &full[..full.find(&stop).unwrap()]
    );
}

#[test]
fn bench_reports_speed_and_memory() {
    let args = [
        "--prompt-tokens",
        "20",
        "--gen-tokens",
        "5",
        "--format",
        "json",
    ];
    let Some(output) = on_tiny("bench", &args, "") else {
        return;
    };
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    for key in ["load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key}: {json}");
    }
    assert_eq!(json["prompt_tokens"], 20);
    assert_eq!(json["gen_tokens"], 5);
}

#[test]
fn chat_keeps_history_and_obeys_commands() {
    let args = ["--max-new-tokens", "3", "--seed", "1"];
    let script = "こんにちは\n\n/reset\n東京\n/exit\nnever read\n";
    let Some(output) = on_tiny("chat", &args, script) else {
        return;
    };
    let out = stdout(&output);
    assert!(out.contains("(conversation reset)"), "{out}");
    assert_eq!(out.matches("> ").count(), 5, "{out}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("[3 tokens").count(), 2, "{stderr}");
}

#[test]
fn generate_errors_are_one_line() {
    let with = |extra: &[&str]| on_tiny("generate", &[&["--prompt", "x"][..], extra].concat(), "");
    let Some(output) = with(&["--top-p", "2"]) else {
        return;
    };
    assert_one_error_line(&output, "top_p must be in (0, 1]");
    assert_one_error_line(&with(&["--temperature", "-1"]).unwrap(), "temperature");
    assert_one_error_line(&with(&["--dtype", "f64"]).unwrap(), "unknown dtype");
    assert_one_error_line(&with(&["--device", "tpu"]).unwrap(), "unknown device");
    assert_one_error_line(&with(&["--max-new-tokens", "0"]).unwrap(), "max_new_tokens");
    let long = "東京 ".repeat(100);
    let too_long = on_tiny("generate", &["--raw", "--prompt", &long], "").unwrap();
    assert_one_error_line(&too_long, "context");
    let missing = llmjp(
        &["generate", "--model", "/no/such/dir", "--prompt", "x"],
        "",
    );
    assert_one_error_line(&missing, "neither a model folder nor a Hub id");
}

/// `LLMJP_CPU_ISA` picks the CPU kernels' instruction set: the portable one gives the same
/// greedy answer; an unknown one is a one-line error that names the variable.
#[test]
fn the_instruction_set_can_be_forced() {
    let Some(tokenizer) = model() else {
        return;
    };
    let tiny = tiny_model();
    let run = |isa: &str| {
        Command::new(env!("CARGO_BIN_EXE_llmjp"))
            .args(["generate", "--model", &tiny, "--tokenizer", &tokenizer])
            .args([
                "--prompt",
                "こんにちは",
                "--temperature",
                "0",
                "--max-new-tokens",
                "4",
            ])
            .args(["--dtype", "bf16", "--format", "json"])
            .env("LLMJP_CPU_ISA", isa)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let portable = run("portable");
    assert!(
        portable.status.success(),
        "{}",
        String::from_utf8_lossy(&portable.stderr)
    );
    let ids = |out: &Output| {
        stdout(out)
            .lines()
            .last()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["generated_ids"].clone())
    };
    assert!(ids(&portable).is_some_and(|v| v.as_array().is_some_and(|a| a.len() == 4)));
    assert_one_error_line(&run("sse9"), "LLMJP_CPU_ISA=sse9");
}

#[cfg(unix)]
#[test]
fn serve_answers_over_http_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpStream;

    let Some(tokenizer) = model() else { return };
    let tiny = tiny_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmjp"))
        .args(["serve", "--model", &tiny, "--tokenizer", &tokenizer])
        .args([
            "--port",
            "0",
            "--device",
            "cpu",
            "--served-model-name",
            "tiny",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
        if let Some(addr) = line.trim().strip_prefix("llmjp: serving on http://") {
            break addr.to_owned();
        }
    };
    let body =
        r#"{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "max_tokens": 3}"#;
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"completion_tokens\":3"), "{response}");

    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("llmjp: stopped"), "{rest}");
}
