//! `cargo xtask bench-serve`: `llmjp serve` under load on the 1.8b-shaped random checkpoint
//! — aggregate decode throughput with 1, 4, 8 and 16 concurrent streams, time to first
//! token and inter-token latency, and the prefix cache's effect on time to first token.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use llmjp_testdata::http::{read_chunk, read_head, send};
use serde_json::{json, Value};

use crate::bench_model::{ensure_checkpoint, MODEL_DIR};
use crate::shell::{root, run as run_command};

struct Options {
    gen_tokens: usize,
    levels: Vec<usize>,
    dtype: String,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        gen_tokens: 32,
        levels: vec![1, 4, 8, 16],
        dtype: "bf16".into(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gen-tokens" => {
                options.gen_tokens = value.parse().map_err(|_| "--gen-tokens takes a number")?
            }
            "--concurrency" => {
                options.levels = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .map_err(|_| "--concurrency takes numbers: 1,4,8")
                    })
                    .collect::<Result<_, _>>()?
            }
            "--dtype" => options.dtype = value.clone(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// A `llmjp serve` process; killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(dtype: &str, extra: &[&str]) -> Result<Self, String> {
        let binary = root().join("target/release/llmjp");
        let mut child = Command::new(binary)
            .current_dir(root())
            .args([
                "serve", "--model", MODEL_DIR, "--device", "cpu", "--dtype", dtype,
            ])
            .args([
                "--port",
                "0",
                "--served-model-name",
                "bench",
                "--max-batch",
                "16",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting llmjp serve: {e}"))?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("llmjp serve exited before listening".into());
            }
            if let Some(addr) = line.trim().strip_prefix("llmjp: serving on http://") {
                break addr.to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Ok(Self { child, addr })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Timings of one streamed request.
#[derive(Debug, Default)]
struct Stream {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// One streamed chat; times every content event.
fn stream_chat(addr: &str, user: &str, max_tokens: usize) -> Result<Stream, String> {
    let body = json!({
        "model": "bench",
        "messages": [{"role": "system", "content": "-"}, {"role": "user", "content": user}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    send(
        &mut socket,
        "POST",
        "/v1/chat/completions",
        &[],
        &body.to_string(),
    );
    let mut reader = BufReader::new(socket);
    let (status, _) = read_head(&mut reader);
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut out = Stream::default();
    let (mut buffer, mut last) = (String::new(), None::<Instant>);
    while let Some(chunk) = read_chunk(&mut reader) {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let value: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                out.tokens = n as usize;
            }
            let delta = &value["choices"][0]["delta"];
            let token_event =
                delta["content"].is_string() || value["choices"][0]["finish_reason"].is_string();
            if !token_event {
                continue;
            }
            let now = Instant::now();
            match last {
                None => {
                    out.ttft = (now - start).as_secs_f64();
                    out.first = Some(now);
                }
                Some(last) => out.gaps.push((now - last).as_secs_f64()),
            }
            last = Some(now);
            out.last = Some(now);
        }
    }
    Ok(out)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    ensure_checkpoint()?;
    run_command(Command::new("cargo").args(["build", "--release", "-p", "llmjp-cli"]))?;
    let server = Served::start(&options.dtype, &[])?;
    stream_chat(&server.addr, "準備", 4)?; // warm-up
    println!(
        "llmjp serve, llm-jp-3.1-1.8b shape (random weights, {} on the CPU), chat prompts of ~30 tokens, {} tokens per stream, greedy",
        options.dtype, options.gen_tokens
    );
    println!(
        "{:>7} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "streams", "all tok/s", "decode", "vs 1", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99"
    );
    let mut single = None;
    for &streams in &options.levels {
        let start = Instant::now();
        let results: Vec<Result<Stream, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..streams)
                .map(|i| {
                    let addr = server.addr.clone();
                    let tokens = options.gen_tokens;
                    scope.spawn(move || {
                        stream_chat(
                            &addr,
                            &format!("質問{streams}-{i}: 東京について説明してください。"),
                            tokens,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a client thread"))
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        let tokens: usize = results.iter().map(|r| r.tokens).sum();
        let rate = tokens as f64 / wall;
        // Decode alone: the tokens after each stream's first, from the moment every stream
        // has its first token (the newcomers' prefills are done) to the last token.
        let decoding = results.iter().filter_map(|r| r.first).max();
        let end = results.iter().filter_map(|r| r.last).max();
        let decoded: usize = results.iter().map(|r| r.tokens.saturating_sub(1)).sum();
        let decode = match (decoding, end) {
            (Some(from), Some(to)) if to > from => decoded as f64 / (to - from).as_secs_f64(),
            _ => f64::NAN,
        };
        let base = *single.get_or_insert(decode);
        let mut ttft: Vec<f64> = results.iter().map(|r| r.ttft).collect();
        let mut gaps: Vec<f64> = results
            .iter()
            .flat_map(|r| r.gaps.iter().copied())
            .collect();
        println!(
            "{streams:>7} {rate:>10.2} {decode:>10.2} {:>7.2}x {:>9.0}ms {:>9.0}ms {:>9.0}ms {:>9.0}ms",
            decode / base,
            1e3 * percentile(&mut ttft, 0.5),
            1e3 * percentile(&mut ttft, 0.99),
            1e3 * percentile(&mut gaps, 0.5),
            1e3 * percentile(&mut gaps, 0.99),
        );
    }
    drop(server);

    // Time to first token of chats whose only new part is a short user message.
    let mut ttft = Vec::new();
    for (label, extra) in [
        ("with the prefix cache", &[][..]),
        ("without", &["--prefix-cache-blocks", "0"][..]),
    ] {
        let server = Served::start(&options.dtype, extra)?;
        stream_chat(&server.addr, "準備", 1)?; // the system sentence is now cached (when on)
        let mut times: Vec<f64> = (0..5)
            .map(|i| stream_chat(&server.addr, &format!("こんにちは{i}"), 1).map(|s| s.ttft))
            .collect::<Result<_, _>>()?;
        let median = percentile(&mut times, 0.5);
        println!(
            "time to first token, short new chat, {label}: {:.0} ms",
            1e3 * median
        );
        ttft.push(median);
    }
    println!("with / without the prefix cache: {:.2}", ttft[0] / ttft[1]);
    Ok(())
}
