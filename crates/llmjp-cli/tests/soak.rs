//! Soak: the real `llmjp serve` on the tiny fixture, under an address-space limit, on
//! loopback. Normal clients (greedy, checked against reference answers) run alongside
//! slow-header, slow-body, disconnecting, malformed and flooding clients; afterwards every
//! normal answer was right, latency held, and memory and descriptors are back within
//! bounds. Then shutdown: a half-sent request does not hold SIGTERM up, and a second
//! signal exits at once. See docs/serving.md.

#![cfg(unix)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADDRESS_SPACE: u64 = 4 << 30;
const SOAK: Duration = Duration::from_secs(10);
const PROMPTS: [&str; 3] = ["a", "こんにちは", "今日の天気は"];

/// A running `llmjp serve`; killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts the server on the tiny fixture with 1 s read timeouts and a 2 s grace
    /// unless `settings` (flag, value) say otherwise; `None` without the real tokenizer
    /// (skip).
    fn start(settings: &[(&str, &str)]) -> Option<Self> {
        let mut flags = vec![
            ("--header-read-timeout", "1"),
            ("--body-read-timeout", "1"),
            ("--shutdown-grace", "2"),
            ("--max-connections", "64"),
        ];
        for (flag, value) in settings {
            flags.retain(|(f, _)| f != flag);
            flags.push((flag, value));
        }
        let tokenizer = llmjp_testdata::tokenizer_dir()?;
        let tiny = llmjp_testdata::fixture_dir("tiny-llmjp");
        let mut command = Command::new(env!("CARGO_BIN_EXE_llmjp"));
        command
            .arg("serve")
            .arg("--model")
            .arg(&tiny)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .args([
                "--port",
                "0",
                "--device",
                "cpu",
                "--served-model-name",
                "tiny",
            ])
            .args(flags.iter().flat_map(|(flag, value)| [flag, value]))
            .env("RAYON_NUM_THREADS", "2")
            .env("MALLOC_ARENA_MAX", "2")
            .env_remove("LLMJP_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        llmjp_testdata::limits::limit_address_space(&mut command, ADDRESS_SPACE);
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(
                lines.read_line(&mut line).unwrap() > 0,
                "serve exited early"
            );
            if let Some(addr) = line.trim().strip_prefix("llmjp: serving on http://") {
                break addr.to_owned();
            }
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            collected.lock().unwrap().push_str(&rest);
        });
        Some(Self {
            child,
            addr,
            stderr,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits up to `limit` for the process to exit; its status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "serve still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.lock().unwrap().clone()
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Open file descriptors.
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chat(user: &str, stream: bool) -> String {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": user}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Everything the server sends until it closes (or resets) the connection.
fn read_all(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// POSTs a chat and returns the answer's text (whole or streamed) and the latency.
fn normal_request(addr: &str, user: &str, stream: bool) -> Result<(String, Duration), String> {
    let start = Instant::now();
    let body = chat(user, stream);
    let mut connection = connect(addr);
    write!(
        connection,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let response = read_all(&mut connection);
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    let (_, payload) = response.split_once("\r\n\r\n").unwrap_or_default();
    let text = if stream {
        // Chunked: the `data: ` lines carry the events.
        let mut text = String::new();
        for data in payload.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
            if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
            }
        }
        if !payload.contains("data: [DONE]") {
            return Err(format!("no [DONE]: {payload}"));
        }
        text
    } else {
        let value: Value = serde_json::from_str(payload).map_err(|e| format!("{e}: {payload}"))?;
        value["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| payload.to_owned())?
            .to_owned()
    };
    Ok((text, start.elapsed()))
}

/// Runs `client` over and over on its own thread until `until`.
fn keep_running(until: Instant, client: impl Fn(u64) + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut round = 0;
        while Instant::now() < until {
            client(round);
            round += 1;
        }
    })
}

/// Sends a request head a byte every 150 ms until the server gives up on it.
fn slow_header_client(addr: &str) {
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Drip: "
            .iter()
            .cycle()
            .take(200)
        {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    let answer = read_all(&mut stream);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drip.join().unwrap();
}

/// Declares a body and sends a sliver of it.
fn slow_body_client(addr: &str) {
    let mut stream = connect(addr);
    let _ = write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{{\"messages\""
    );
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Starts a long stream and hangs up after its first bytes.
fn disconnecting_client(addr: &str) {
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "a"}],
        "max_tokens": 30,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let mut stream = connect(addr);
    let _ = write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Hang up once the answer has begun (its first text), or after 2 s.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut seen = Vec::new();
    let mut buffer = [0; 1024];
    while let Ok(n) = stream.read(&mut buffer) {
        seen.extend_from_slice(&buffer[..n]);
        if n == 0 || seen.windows(9).any(|w| w == b"\"content\"") {
            break;
        }
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(20));
}

/// Sends a request head of pseudo-random bytes (and sometimes a declared huge body).
fn malformed_client(addr: &str, round: u64) {
    let mut state = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut head = match next() % 4 {
        0 => b"GET /health HTTP/1.1\r\nContent-Length: 99999999999\r\n".to_vec(),
        1 => b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        2 => format!("GET /{} HTTP/1.1\r\n", "x".repeat(70_000)).into_bytes(),
        _ => Vec::new(),
    };
    head.extend((0..next() % 300).map(|_| next() as u8));
    head.extend_from_slice(b"\r\n\r\n");
    let mut stream = connect(addr);
    let _ = stream.write_all(&head);
    let answer = read_all(&mut stream);
    assert!(
        !answer.starts_with("HTTP/1.1 5"),
        "{}",
        &answer[..answer.len().min(300)]
    );
}

/// Opens a handful of connections that say nothing, and holds them.
fn flooding_client(addr: &str) {
    let silent: Vec<TcpStream> = (0..16)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    drop(silent);
}

#[test]
fn soak_normal_answers_hold_among_hostile_clients_and_sigterm_is_not_held_up() {
    let Some(mut serve) = Serve::start(&[]) else {
        eprintln!("skipping: LLMJP_TOKENIZER_DIR is not set");
        return;
    };
    let addr = serve.addr.clone();
    let references: Vec<String> = PROMPTS
        .iter()
        .map(|p| normal_request(&addr, p, false).unwrap().0)
        .collect();
    let mut quiet = Vec::new();
    for round in 0..6 {
        let prompt = round % PROMPTS.len();
        let (text, latency) = normal_request(&addr, PROMPTS[prompt], round % 2 == 1).unwrap();
        assert_eq!(text, references[prompt]);
        quiet.push(latency);
    }
    let quiet_max = quiet.iter().max().copied().unwrap();
    let rss_before = serve.rss_kib();
    let descriptors_before = serve.descriptors();

    let until = Instant::now() + SOAK;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for worker in 0..3 {
        let (addr, references) = (addr.clone(), references.clone());
        let (latencies, failures) = (latencies.clone(), failures.clone());
        clients.push(keep_running(until, move |round| {
            let prompt = (round as usize + worker) % PROMPTS.len();
            match normal_request(&addr, PROMPTS[prompt], round % 2 == 0) {
                Ok((text, _)) if text != references[prompt] => failures
                    .lock()
                    .unwrap()
                    .push(format!("{text:?} != {:?}", references[prompt])),
                Ok((_, latency)) => latencies.lock().unwrap().push(latency),
                Err(e) => failures.lock().unwrap().push(e),
            }
        }));
    }
    for _ in 0..4 {
        let addr = addr.clone();
        clients.push(keep_running(until, move |_| slow_header_client(&addr)));
    }
    for _ in 0..3 {
        let addr = addr.clone();
        clients.push(keep_running(until, move |_| slow_body_client(&addr)));
    }
    for _ in 0..2 {
        let addr = addr.clone();
        clients.push(keep_running(until, move |_| disconnecting_client(&addr)));
    }
    for worker in 0..2 {
        let addr = addr.clone();
        clients.push(keep_running(until, move |round| {
            malformed_client(&addr, round * 2 + worker)
        }));
    }
    {
        let addr = addr.clone();
        clients.push(keep_running(until, move |_| flooding_client(&addr)));
    }
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    let latencies = latencies.lock().unwrap();
    let worst = latencies.iter().max().copied().unwrap();
    eprintln!(
        "soak: {} normal answers, worst {worst:?} (quiet worst {quiet_max:?})",
        latencies.len()
    );
    assert!(
        latencies.len() >= 30,
        "only {} normal answers",
        latencies.len()
    );
    assert!(
        worst < Duration::from_secs(5).max(quiet_max * 20),
        "worst normal latency {worst:?} (quiet worst {quiet_max:?})"
    );
    // Connections left by the hostile clients close within the 1 s timeouts.
    let settle = Instant::now();
    while serve.descriptors() > descriptors_before + 2 {
        assert!(
            settle.elapsed() < Duration::from_secs(10),
            "{} descriptors open, {descriptors_before} before the soak",
            serve.descriptors()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "soak: {} descriptors after (settled in {:?}), {descriptors_before} before",
        serve.descriptors(),
        settle.elapsed()
    );
    let rss_after = serve.rss_kib();
    eprintln!("soak: rss {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 128 * 1024,
        "rss grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(
        normal_request(&addr, PROMPTS[0], false).unwrap().0,
        references[0]
    );

    // A client holding a half-sent request does not hold SIGTERM up.
    let mut half_sent = connect(&addr);
    half_sent
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    serve.signal(libc::SIGTERM);
    let (status, took) = serve.wait_exit(Duration::from_secs(10));
    let stderr = serve.stderr();
    assert!(status.success(), "{status}: {stderr}");
    eprintln!("soak: SIGTERM with a half-sent request: exited in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} (grace 2 s)"
    );
    assert!(stderr.contains("llmjp: stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_second_signal_exits_at_once_while_a_request_runs() {
    let Some(mut serve) =
        Serve::start(&[("--shutdown-grace", "30"), ("--body-read-timeout", "60")])
    else {
        return;
    };
    // A request in flight (its body still arriving) would hold the shutdown for the grace.
    let mut uploading = connect(&serve.addr);
    write!(
        uploading,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    serve.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "exited before the grace"
    );
    serve.signal(libc::SIGINT);
    let (status, took) = serve.wait_exit(Duration::from_secs(5));
    let stderr = serve.stderr();
    assert_eq!(status.code(), Some(130), "{status}: {stderr}");
    assert!(status.signal().is_none());
    eprintln!("soak: second signal: exited in {took:?}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert!(stderr.contains("SIGINT: exiting now"), "{stderr}");
}

#[test]
fn serve_runs_with_an_unwritable_stderr_and_an_empty_api_key() {
    let Some(tokenizer) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmjp"))
        .arg("serve")
        .arg("--model")
        .arg(llmjp_testdata::fixture_dir("tiny-llmjp"))
        .arg("--tokenizer")
        .arg(&tokenizer)
        .args(["--port", &port.to_string(), "--device", "cpu"])
        .args(["--served-model-name", "tiny"])
        .env("LLMJP_API_KEY", "")
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No key was asked for: the empty one is none.
    normal_request(&addr, "a", false).unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
