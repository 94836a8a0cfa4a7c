//! Cost of bounded rendering: `ChatTemplate::render` (hardened instructions, memory and time
//! budgets) against plain minijinja rendering the same templates in the same run.
//! `cargo bench -p llmjp-chat --bench render`.

use std::collections::BTreeMap;
use std::time::Instant;

use llmjp_chat::{ChatTemplate, Message};
use minijinja::{context, Environment};

/// The fastest of 20 runs of `n` calls after a warm-up, in microseconds per call.
fn time<F: FnMut()>(n: usize, mut f: F) -> f64 {
    f();
    (0..20)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/templates");
    let tokens: BTreeMap<String, String> = [("bos_token", "<s>"), ("eos_token", "</s>")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into_iter()
        .collect();
    let messages: Vec<Message> = (0..20)
        .map(|i| match i % 2 {
            0 => Message::user(format!("質問 {i}: 自然言語処理とは何か")),
            _ => Message::assistant(format!("答え {i}: 人間の言語を扱う技術です。")),
        })
        .collect();
    println!(
        "{:<24} {:>12} {:>12} {:>7}",
        "template (20 messages)", "llmjp µs", "plain µs", "ratio"
    );
    for name in ["llm-jp-3", "llama-3.1", "chatml-qwen2.5"] {
        let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let bounded = ChatTemplate::new(&source, tokens.clone()).unwrap();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |m: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    m,
                ))
            },
        );
        env.add_template("t", &source).unwrap();
        let plain = env.get_template("t").unwrap();
        let ctx = context! { messages => &messages, bos_token => "<s>", eos_token => "</s>",
        add_generation_prompt => true, tools => (), documents => () };
        let ours = time(200, || {
            bounded.render(&messages, true).unwrap();
        });
        let theirs = time(200, || {
            plain.render(&ctx).unwrap();
        });
        println!(
            "{name:<24} {ours:>12.1} {theirs:>12.1} {:>7.2}",
            ours / theirs
        );
    }
}
