//! Hostile inputs: broken and malicious model folders, templates, files and flags, each run
//! through the CLI under a 2 GiB address-space limit and a 20 s deadline. Every case ends
//! with exit 0 and a correct result, or with a one-line `error:` that says what is wrong:
//! never a panic, an abort, a signal or a hang. See docs/security.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADDRESS_SPACE: u64 = 2 << 30;
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs the CLI under the limits; `None` when the real tokenizer is absent (skip).
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmjp"));
    command
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    llmjp_testdata::limits::limit_address_space(&mut command, ADDRESS_SPACE);
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{args:?} did not finish within {DEADLINE:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.join();
    child.wait_with_output().unwrap()
}

/// A case that must fail cleanly: exit 1, or 2 for a flag value clap rejects (not a
/// signal), exactly one `error:` line containing `needle`, no panic.
fn assert_refused(name: &str, output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{name}: expected exit 1 (refused) or 2 (a flag clap rejects), got {:?}; stderr: {stderr}",
        output.status
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{name}: {stderr}");
    assert!(errors[0].contains(needle), "{name}: {stderr}");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
}

/// A case that must succeed.
fn assert_ok(name: &str, output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{name}: {stderr}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn tokenizer() -> Option<String> {
    llmjp_testdata::tokenizer_dir().map(|d| d.to_string_lossy().into_owned())
}

fn tiny() -> PathBuf {
    llmjp_testdata::fixture_dir("tiny-llmjp")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llmjp-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the tiny model whose config.json has `changes` applied (`null` removes a key).
fn model_with_config(name: &str, changes: Value) -> TempDir {
    let dir = TempDir::new(name);
    for file in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(tiny().join(file), dir.0.join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            config.as_object_mut().unwrap().remove(key);
        } else {
            config[key] = value.clone();
        }
    }
    std::fs::write(dir.0.join("config.json"), config.to_string()).unwrap();
    dir
}

fn generate(model: &str, tokenizer: &str, extra: &[&str]) -> Output {
    let args = [
        &[
            "generate",
            "--model",
            model,
            "--tokenizer",
            tokenizer,
            "--prompt",
            "こんにちは",
        ][..],
        extra,
    ]
    .concat();
    // Defaults for what `extra` does not set.
    let mut args = args;
    for (flag, value) in [("--max-new-tokens", "4"), ("--temperature", "0")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    run(&args, b"")
}

#[test]
fn hostile_config_values_are_refused_before_allocating() {
    let Some(tokenizer) = tokenizer() else { return };
    let cases: &[(&str, Value, &str)] = &[
        (
            "huge context",
            json!({"max_position_embeddings": 100_000_000u64}),
            "max_position_embeddings is 100000000",
        ),
        (
            "zero context",
            json!({"max_position_embeddings": 0}),
            "max_position_embeddings is 0",
        ),
        (
            "zero rope_theta",
            json!({"rope_theta": 0.0}),
            "rope_theta is 0",
        ),
        (
            "negative rope_theta",
            json!({"rope_theta": -5.0}),
            "rope_theta is -5",
        ),
        (
            "negative rms_norm_eps",
            json!({"rms_norm_eps": -1e-5}),
            "rms_norm_eps is -0.00001",
        ),
        (
            "huge layer count",
            json!({"num_hidden_layers": 1_000_000_000u64}),
            "num_hidden_layers is",
        ),
        (
            "huge vocabulary",
            json!({"vocab_size": 10_000_000_000u64}),
            "vocab_size is",
        ),
        (
            "zero hidden size",
            json!({"hidden_size": 0}),
            "hidden_size is 0",
        ),
        ("odd head_dim", json!({"head_dim": 7}), "head_dim is 7"),
        (
            "scaled RoPE, older key",
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
            "RoPE scaling \"linear\" is not supported",
        ),
        (
            "scaled RoPE, newer key",
            json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}),
            "RoPE scaling \"yarn\" is not supported",
        ),
        (
            "eos outside the vocabulary",
            json!({"eos_token_id": 1_000_000}),
            "outside the vocabulary",
        ),
        (
            "unknown architecture",
            json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}),
            "unsupported architecture",
        ),
        (
            "gelu",
            json!({"hidden_act": "gelu"}),
            "hidden_act \"gelu\" is not supported",
        ),
        (
            "string where a number goes",
            json!({"hidden_size": "16"}),
            "invalid JSON",
        ),
        (
            "negative count",
            json!({"num_attention_heads": -2}),
            "invalid JSON",
        ),
    ];
    for (name, changes, needle) in cases {
        let dir = model_with_config(&name.replace(' ', "-"), changes.clone());
        assert_refused(name, &generate(dir.path(), &tokenizer, &[]), needle);
    }
}

#[test]
fn files_that_are_not_regular_files_are_refused_not_waited_on() {
    let Some(tokenizer) = tokenizer() else { return };
    let mkfifo = |path: &Path| {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    };
    // config.json as a FIFO (reading it would block forever).
    let dir = model_with_config("fifo-config", json!({}));
    std::fs::remove_file(dir.0.join("config.json")).unwrap();
    mkfifo(&dir.0.join("config.json"));
    assert_refused(
        "FIFO config",
        &generate(dir.path(), &tokenizer, &[]),
        "not a regular file",
    );

    // model.safetensors as a folder, and as a device.
    let dir = model_with_config("dir-weights", json!({}));
    std::fs::remove_file(dir.0.join("model.safetensors")).unwrap();
    std::fs::create_dir(dir.0.join("model.safetensors")).unwrap();
    assert_refused(
        "folder weights",
        &generate(dir.path(), &tokenizer, &[]),
        "not a regular file",
    );
    std::fs::remove_dir(dir.0.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.0.join("model.safetensors")).unwrap();
    assert_refused(
        "device weights",
        &generate(dir.path(), &tokenizer, &[]),
        "not a regular file",
    );

    // tokenizer.json as a FIFO.
    let tok = TempDir::new("fifo-tokenizer");
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(Path::new(&tokenizer).join(file), tok.0.join(file)).unwrap();
    }
    mkfifo(&tok.0.join("tokenizer.json"));
    let output = generate(&tiny().to_string_lossy(), tok.path(), &[]);
    assert_refused("FIFO tokenizer", &output, "not a regular file");

    // A config.json far larger than any real one (sparse: costs no disk).
    let dir = model_with_config("huge-config", json!({}));
    std::fs::File::options()
        .write(true)
        .open(dir.0.join("config.json"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    assert_refused(
        "huge config",
        &generate(dir.path(), &tokenizer, &[]),
        "larger than the limit",
    );

    // --messages from a device or a FIFO; --model naming a file.
    let render = |messages: &str| {
        run(
            &["render", "--model", &tokenizer, "--messages", messages],
            b"",
        )
    };
    assert_refused(
        "messages from /dev/zero",
        &render("/dev/zero"),
        "not a regular file",
    );
    let fifo = TempDir::new("fifo-messages");
    mkfifo(&fifo.0.join("m.json"));
    assert_refused(
        "messages from a FIFO",
        &render(fifo.0.join("m.json").to_str().unwrap()),
        "not a regular file",
    );
    let file = tiny().join("config.json");
    let output = run(&["tokenize", "--model", file.to_str().unwrap(), "x"], b"");
    assert_refused("model is a file", &output, "expected a model folder");
}

#[test]
fn broken_weights_stop_with_a_typed_error() {
    let Some(tokenizer) = tokenizer() else { return };
    // NaN in the final norm: every logit is NaN.
    let dir = model_with_config("nan-weights", json!({}));
    let path = dir.0.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header["model.norm.weight"]["data_offsets"];
    let (start, end) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    for pair in bytes[8 + header_len + start..8 + header_len + end].chunks_exact_mut(2) {
        pair.copy_from_slice(&0x7fc0u16.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_refused(
        "NaN weights",
        &generate(dir.path(), &tokenizer, &[]),
        "non-finite logit",
    );

    // Truncated weights.
    let dir = model_with_config("truncated-weights", json!({}));
    let file = std::fs::File::options()
        .write(true)
        .open(dir.0.join("model.safetensors"))
        .unwrap();
    file.set_len(1000).unwrap();
    assert_refused(
        "truncated weights",
        &generate(dir.path(), &tokenizer, &[]),
        "invalid safetensors",
    );
}

#[test]
fn hostile_flags_are_refused_or_bounded() {
    let Some(tokenizer) = tokenizer() else { return };
    let model = tiny().to_string_lossy().into_owned();
    let base = ["--model", model.as_str(), "--tokenizer", tokenizer.as_str()];
    let bench = run(
        &[
            &["bench"][..],
            &base,
            &["--prompt-tokens", "18446744073709551615"],
        ]
        .concat(),
        b"",
    );
    assert_refused(
        "bench prompt overflow",
        &bench,
        "more positions than the model's context of 64 holds",
    );
    let bench = run(
        &[
            &["bench"][..],
            &base,
            &["--gen-tokens", "18446744073709551615"],
        ]
        .concat(),
        b"",
    );
    assert_refused(
        "bench gen overflow",
        &bench,
        "more positions than the model's context of 64 holds",
    );

    // A prompt far longer than the context is refused before it is encoded.
    let long = "自然言語処理とは何か。".repeat(500_000);
    let output = run(
        &[
            &["generate"][..],
            &base,
            &["--raw", "--max-new-tokens", "1"],
        ]
        .concat(),
        long.as_bytes(),
    );
    assert_refused(
        "long prompt",
        &output,
        "more than a context of 64 tokens can hold",
    );

    // A huge --max-new-tokens generates until the context is full.
    let output = generate(
        &model,
        &tokenizer,
        &[
            "--max-new-tokens",
            "18446744073709551615",
            "--format",
            "json",
        ],
    );
    let out = assert_ok("huge max-new-tokens", &output);
    let json: Value = serde_json::from_str(&out).unwrap();
    let prompt = json["prompt_ids"].as_array().unwrap().len();
    let generated = json["generated_ids"].as_array().unwrap().len();
    match json["finish_reason"].as_str().unwrap() {
        "context" => assert_eq!(prompt + generated, 64, "{json}"),
        "eos" => assert!(prompt + generated <= 64, "{json}"),
        other => panic!("unexpected finish reason {other}: {json}"),
    }

    // A tiny temperature behaves as greedy instead of overflowing to a NaN softmax.
    let greedy = assert_ok(
        "greedy",
        &generate(
            &model,
            &tokenizer,
            &["--max-new-tokens", "8", "--format", "json"],
        ),
    );
    let tiny_t = assert_ok(
        "tiny temperature",
        &generate(
            &model,
            &tokenizer,
            &[
                "--max-new-tokens",
                "8",
                "--format",
                "json",
                "--temperature",
                "1e-39",
                "--top-p",
                "1",
                "--no-top-k",
                "--repetition-penalty",
                "1",
            ],
        ),
    );
    let ids = |s: &str| serde_json::from_str::<Value>(s).unwrap()["generated_ids"].clone();
    assert_eq!(ids(&greedy), ids(&tiny_t));
}

#[test]
fn hostile_templates_fail_within_budget() {
    let Some(tokenizer) = tokenizer() else { return };
    let templates = [
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{{ 'a\\nb' | indent(999999999999) }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}{{ ns.s }}",
        "{{ ([('x' * 99999999)] * 99999999) ~ '' }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set ns = namespace(l=none) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
    ];
    for (i, template) in templates.iter().enumerate() {
        let dir = TempDir::new(&format!("template-{i}"));
        std::fs::copy(
            Path::new(&tokenizer).join("tokenizer.json"),
            dir.0.join("tokenizer.json"),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("tokenizer_config.json"),
            json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}).to_string(),
        )
        .unwrap();
        let output = run(
            &["render", "--model", dir.path(), "--messages", "-"],
            br#"[{"role": "user", "content": "hi"}]"#,
        );
        assert_refused(&format!("template {i}"), &output, "chat template");
    }
}

#[test]
fn chat_survives_a_bad_line() {
    let Some(tokenizer) = tokenizer() else { return };
    let model = tiny().to_string_lossy().into_owned();
    let mut input = b"\xff\xfe bad\n".to_vec();
    input.extend_from_slice(&vec![b'x'; 2 << 20]);
    input.extend_from_slice(b"\nhello\n");
    let output = run(
        &[
            "chat",
            "--model",
            &model,
            "--tokenizer",
            &tokenizer,
            "--max-new-tokens",
            "2",
            "--temperature",
            "0",
        ],
        &input,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(stderr.contains("longer than"), "{stderr}");
    // The valid line after them was answered (a summary line per answer).
    assert_eq!(stderr.matches("finish:").count(), 1, "{stderr}");
}

#[test]
fn quantized_models_run_and_hostile_quantized_inputs_are_refused() {
    let Some(tokenizer) = tokenizer() else { return };
    let tiny = tiny();
    let tiny = tiny.to_str().unwrap();
    // Quantize on load, and save a quantized copy that runs (the tiny model's 32-wide
    // matrices are quantized, its 16-wide ones stay in float).
    assert_ok(
        "q8_0 on load",
        &generate(tiny, &tokenizer, &["--dtype", "q8_0"]),
    );
    let out = TempDir::new("quantized");
    let saved = run(
        &[
            "quantize",
            "--model",
            tiny,
            "--format",
            "q4_0",
            "--out",
            out.path(),
        ],
        b"",
    );
    assert!(assert_ok("quantize", &saved).contains("tensors quantized"));
    assert_ok("saved q4_0", &generate(out.path(), &tokenizer, &[]));
    assert_refused(
        "unknown quantize format",
        &run(
            &[
                "quantize",
                "--model",
                tiny,
                "--format",
                "q2_k",
                "--out",
                out.path(),
            ],
            b"",
        ),
        "q2_k",
    );
    assert_refused(
        "unknown dtype",
        &generate(tiny, &tokenizer, &["--dtype", "int3"]),
        "int3",
    );
    let config = json!({"quantization_config": {"quant_method": "llmjp", "format": "q3_k"}});
    let unknown = model_with_config("unknown-quantization", config);
    assert_refused(
        "unknown quantization format",
        &generate(unknown.path(), &tokenizer, &[]),
        "q3_k",
    );
    // A GGUF header claiming 2^64 - 1 tensors, and one cut short.
    let dir = TempDir::new("gguf");
    let hostile = dir.0.join("hostile.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    std::fs::write(&hostile, &bytes).unwrap();
    let path = hostile.to_str().unwrap();
    assert_refused("hostile GGUF", &generate(path, &tokenizer, &[]), "GGUF");
    std::fs::write(&hostile, &bytes[..10]).unwrap();
    assert_refused("truncated GGUF", &generate(path, &tokenizer, &[]), "GGUF");
}

#[test]
fn an_eos_token_id_outside_the_vocabulary_is_refused() {
    let Some(tokenizer) = tokenizer() else { return };
    let model = model_with_config("eos-oov", json!({}));
    std::fs::write(
        model.0.join("generation_config.json"),
        r#"{"eos_token_id": 99999999}"#,
    )
    .unwrap();
    let output = generate(model.path(), &tokenizer, &[]);
    assert_refused(
        "eos outside the vocabulary",
        &output,
        "eos_token_id 99999999",
    );
}

#[test]
fn chat_stops_on_endless_input_with_a_message() {
    let Some(tokenizer) = tokenizer() else { return };
    let tiny = tiny();
    let model = tiny.to_str().unwrap();
    // 40 MiB without a newline (what `< /dev/zero` gives): an error, in bounded time.
    let input = vec![b'x'; 40 << 20];
    let output = run(
        &["chat", "--model", model, "--tokenizer", &tokenizer],
        &input,
    );
    assert_refused("endless line", &output, "without a newline");
}

#[test]
fn an_unwritable_stderr_loses_status_lines_not_the_process() {
    let Some(tokenizer) = tokenizer() else { return };
    let tiny = tiny();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let generate = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_llmjp"))
            .args(["generate", "--model", model, "--tokenizer", &tokenizer])
            .args(["--prompt", "こんにちは", "--max-new-tokens", "2"])
            .args(["--temperature", "0"])
            .stdin(Stdio::null())
            .stderr(full())
            .output()
            .unwrap()
    };
    // Loading lines and the summary go to a full stderr: the answer still comes.
    let output = generate(tiny.to_str().unwrap());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!output.stdout.is_empty());
    // An error line that cannot be written still exits 1, not with a panic (101).
    let output = generate("/nonexistent/model-folder");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}
