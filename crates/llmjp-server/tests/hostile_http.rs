//! Hostile HTTP clients over raw TCP: dripped headers, slow bodies, declared and chunked
//! bodies over the limit, malformed request heads, floods of connections, and requests
//! the API refuses field by field. Each ends with the right status or a closed connection
//! within 20 s, and the server answers a normal request afterwards. Short timeouts come
//! from `ServerConfig`. Each test runs in a child process under a 4 GiB address-space
//! limit.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{request, tokenizer_dir, TestServer, MODEL};
use llmjp_testdata::limits::{is_test_child, run_test_in_child};
use proptest::prelude::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);
const CHAT: &str = "/v1/chat/completions";

/// Address space of the child process each test runs in.
const ADDRESS_SPACE: u64 = 4 << 30;

/// Whether the calling test should run its body here: in the child process that
/// `run_test_in_child` starts under an address-space limit. Outside it, runs the test
/// `name` there (panicking unless it passes) and returns `false`.
fn in_limited_child(name: &str) -> bool {
    if is_test_child() {
        return true;
    }
    run_test_in_child(name, ADDRESS_SPACE, Duration::from_secs(120));
    false
}

fn short_timeouts(config: &mut llmjp_server::ServerConfig) {
    config.header_read_timeout = Duration::from_millis(800);
    config.body_read_timeout = Duration::from_millis(800);
    config.max_body_bytes = 4096;
}

fn chat_body(user: &str) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": 3,
        "temperature": 0,
    })
}

/// What came back on a raw connection: the status (none when it was closed without an
/// answer) and everything read.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    text: String,
}

/// Reads until the server closes the connection (or resets it), at most [`DEADLINE`].
fn read_answer(stream: &mut TcpStream) -> Answer {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the server held the connection for {DEADLINE:?}; read so far: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Answer { status, text }
}

/// The JSON body of an answer.
fn body_of(answer: &Answer) -> Value {
    let body = answer
        .text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {:?}", answer.text))
}

/// Checks a status and its OpenAI error object; returns the error.
fn assert_openai_error(answer: &Answer, status: u16) -> Value {
    assert_eq!(answer.status, Some(status), "{:?}", answer.text);
    let error = body_of(answer)["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert!(
        error["type"].is_string() && error.get("param").is_some(),
        "{error}"
    );
    error
}

fn assert_still_answers(addr: SocketAddr) {
    let response = request(addr, "POST", CHAT, &[], &chat_body("a").to_string());
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["usage"]["completion_tokens"], 3);
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn dripped_headers_get_408_and_an_idle_connection_is_closed() {
    if !in_limited_child("dripped_headers_get_408_and_an_idle_connection_is_closed") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(short_timeouts);
    let start = Instant::now();
    let mut dripping = connect(server.addr);
    let mut writer = dripping.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut idle = connect(server.addr);
    let error = assert_openai_error(&read_answer(&mut dripping), 408);
    assert_eq!(error["code"], "request_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drip.join().unwrap();
    let silent = read_answer(&mut idle);
    assert_eq!(silent.status, None, "{:?}", silent.text);
    assert_still_answers(server.addr);
    assert_eq!(server.metric(&refused(408)), 1.0);
}

/// The metric counting requests refused with `status` before they reached the router.
fn refused(status: u16) -> String {
    format!("llmjp_requests_total{{endpoint=\"connection\",status=\"{status}\"}}")
}

#[test]
fn a_declared_gigabyte_body_gets_413_before_it_is_read() {
    if !in_limited_child("a_declared_gigabyte_body_gets_413_before_it_is_read") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(short_timeouts);
    let start = Instant::now();
    let mut stream = connect(server.addr);
    write!(
        stream,
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{\"mess"
    )
    .unwrap();
    let error = assert_openai_error(&read_answer(&mut stream), 413);
    assert_eq!(error["code"], "request_too_large");
    assert!(
        start.elapsed() < Duration::from_millis(700),
        "{:?}",
        start.elapsed()
    );
    assert_still_answers(server.addr);
    assert_eq!(server.metric(&refused(413)), 1.0);
}

#[test]
fn a_chunked_body_over_the_limit_is_cut_with_413() {
    if !in_limited_child("a_chunked_body_over_the_limit_is_cut_with_413") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(short_timeouts);
    let mut stream = connect(server.addr);
    write!(
        stream,
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    for _ in 0..6 {
        if stream.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    assert_openai_error(&read_answer(&mut stream), 413);
    assert_still_answers(server.addr);
}

#[test]
fn a_slow_body_gets_408() {
    if !in_limited_child("a_slow_body_gets_408") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(short_timeouts);
    let mut stream = connect(server.addr);
    write!(
        stream,
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{{\"messages\""
    )
    .unwrap();
    let error = assert_openai_error(&read_answer(&mut stream), 408);
    assert!(
        error["message"].as_str().unwrap().contains("body"),
        "{error}"
    );
    assert_still_answers(server.addr);
}

#[test]
fn a_flood_of_silent_connections_is_capped_and_normal_requests_get_through() {
    if !in_limited_child("a_flood_of_silent_connections_is_capped_and_normal_requests_get_through")
    {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| {
        short_timeouts(c);
        c.max_connections = 8;
    });
    let start = Instant::now();
    let flood: Vec<TcpStream> = (0..64).map(|_| connect(server.addr)).collect();
    assert_still_answers(server.addr);
    assert!(start.elapsed() < DEADLINE, "{:?}", start.elapsed());
    drop(flood);
    assert_still_answers(server.addr);
}

#[test]
fn shutdown_closes_half_sent_requests_and_idle_connections_at_once() {
    if !in_limited_child("shutdown_closes_half_sent_requests_and_idle_connections_at_once") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| {
        c.shutdown_grace = Duration::from_secs(30);
        c.header_read_timeout = Duration::from_secs(30);
    });
    let addr = server.addr;
    let mut half_sent = connect(addr);
    half_sent
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    let mut idle = connect(addr);
    // A keep-alive connection that has been answered once.
    let mut kept = connect(addr);
    write!(kept, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    server.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for stream in [&mut half_sent, &mut idle] {
        assert_eq!(read_answer(stream).status, None);
    }
    read_answer(&mut kept);
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn shutdown_cuts_a_request_still_running_after_the_grace_period() {
    if !in_limited_child("shutdown_cuts_a_request_still_running_after_the_grace_period") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| {
        c.shutdown_grace = Duration::from_millis(500);
        c.body_read_timeout = Duration::from_secs(60);
    });
    let mut uploading = connect(server.addr);
    write!(
        uploading,
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    server.shutdown();
    // Grace, then at most a second to flush and a second to close.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    read_answer(&mut uploading);
}

#[test]
fn api_refusals_name_the_field_at_fault() {
    if !in_limited_child("api_refusals_name_the_field_at_fault") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    // An empty key is no key.
    let server = TestServer::start(|c| c.api_key = Some(String::new()));
    let post = |body: &Value| request(server.addr, "POST", CHAT, &[], &body.to_string());
    for (field, value) in [
        ("tools", json!([])),
        ("tool_choice", json!("none")),
        ("tools", Value::Null),
        ("logit_bias", json!({})),
        ("seed", json!(-1)),
    ] {
        let mut body = chat_body("a");
        body[field] = value;
        let response = post(&body);
        assert_eq!(response.status, 200, "{field}: {}", response.body);
    }
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (field, value) in [
        ("tools", tool),
        ("tool_choice", json!("required")),
        ("logit_bias", json!({"5": 10})),
        ("temperature", json!("hot")),
        ("temperature", json!(2.5)),
        ("top_p", json!([1])),
        ("top_k", json!(1.5)),
        ("min_p", json!(-0.1)),
        ("repetition_penalty", json!(false)),
        ("frequency_penalty", json!("x")),
        ("presence_penalty", json!(9)),
        ("seed", json!(18446744073709551615u64)),
        ("max_tokens", json!(1.5)),
        ("max_completion_tokens", json!(0)),
        ("n", json!("2")),
        ("stop", json!([1, 2])),
        ("stream", json!("yes")),
        ("model", json!(7)),
        ("messages", json!("hi")),
        ("messages", json!([{"content": "no role"}])),
    ] {
        let mut body = chat_body("a");
        body[field] = value.clone();
        let response = post(&body);
        assert_eq!(response.status, 400, "{field}={value}: {}", response.body);
        let error = &response.json()["error"];
        assert_eq!(error["param"], field, "{field}={value}: {error}");
        assert_eq!(error["type"], "invalid_request_error", "{error}");
    }
    let prompt = request(
        server.addr,
        "POST",
        "/v1/completions",
        &[],
        &json!({"prompt": 5}).to_string(),
    );
    assert_eq!(prompt.json()["error"]["param"], "prompt", "{}", prompt.body);
}

/// A random request head: odd methods, paths, header names and values (control bytes,
/// non-UTF-8, huge), bad and conflicting lengths.
fn hostile_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PATCH".to_owned()),
        Just(String::new()),
        "[A-Z]{1,12}",
        "[ -~]{0,20}",
    ];
    let path = prop_oneof![
        Just("/v1/chat/completions".to_owned()),
        Just("/health".to_owned()),
        Just("*".to_owned()),
        "/[ -~]{0,40}",
        Just(format!("/{}", "a".repeat(70_000))),
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("HTTP/9"),
        Just(""),
    ];
    let byte_string = |max: usize| proptest::collection::vec(any::<u8>(), 0..max);
    let header = prop_oneof![
        (
            Just(b"Content-Length".to_vec()),
            "[-+0-9a-f ,]{0,24}".prop_map(String::into_bytes)
        ),
        (
            Just(b"Transfer-Encoding".to_vec()),
            prop_oneof![
                Just(b"chunked".to_vec()),
                Just(b"gzip, chunked".to_vec()),
                byte_string(12)
            ]
        ),
        (Just(b"Expect".to_vec()), Just(b"100-continue".to_vec())),
        (byte_string(16), byte_string(40)),
        (Just(b"X-Huge".to_vec()), Just(vec![b'h'; 80_000])),
    ];
    (
        method,
        path,
        version,
        proptest::collection::vec(header, 0..6),
        prop_oneof![Just(0usize), 0usize..200, Just(150usize)],
        byte_string(64),
    )
        .prop_map(|(method, path, version, headers, many, body)| {
            let mut head = format!("{method} {path} {version}\r\nHost: x\r\n").into_bytes();
            for (name, value) in headers {
                head.extend_from_slice(&name);
                head.extend_from_slice(b": ");
                head.extend_from_slice(&value);
                head.extend_from_slice(b"\r\n");
            }
            for i in 0..many {
                head.extend_from_slice(format!("X-Many-{i}: {i}\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head.extend_from_slice(&body);
            head
        })
}

#[test]
fn malformed_request_heads_get_a_4xx_or_a_closed_connection() {
    if !in_limited_child("malformed_request_heads_get_a_4xx_or_a_closed_connection") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(short_timeouts);
    let addr = server.addr;
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(head in hostile_head())| {
        let mut stream = connect(addr);
        // The server may answer and close before everything is written.
        let _ = stream.write_all(&head);
        let answer = read_answer(&mut stream);
        if let Some(status) = answer.status {
            prop_assert!(
                (200..500).contains(&status),
                "{status} for {:?}: {:?}",
                String::from_utf8_lossy(&head[..head.len().min(200)]),
                answer.text
            );
        }
    });
    assert_still_answers(addr);
    // What hyper refuses itself is counted too.
    let mut stream = connect(addr);
    stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut stream).status, Some(400));
    assert!(server.metric(&refused(400)) >= 1.0);
}

/// Streams still generating when the grace period ends get a last `shutting_down` event
/// and `[DONE]`; a stream whose client stopped reading is cut; `run` returns within the
/// grace, a second to flush and a second to close, whatever the clients do.
#[test]
fn shutdown_ends_running_streams_after_the_grace_period() {
    if !in_limited_child("shutdown_ends_running_streams_after_the_grace_period") {
        return;
    }
    let Some(_) = tokenizer_dir() else { return };
    let (pipeline, _folder) = common::long_context_pipeline();
    let server = TestServer::start_with(pipeline, |c| {
        c.shutdown_grace = Duration::from_millis(500);
        c.engine.max_batch = 8;
    });
    let addr = server.addr;
    // Sampled, 4,000 tokens each, eight at once: many seconds of work on any CPU.
    let body = |seed: u64| {
        json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "長い話をして"}],
            "max_tokens": 4000,
            "ignore_eos": true,
            "temperature": 0.7,
            "top_p": 0.95,
            "seed": seed,
            "stream": true,
        })
        .to_string()
    };
    let readers: Vec<_> = (0..7)
        .map(|seed| {
            let body = body(seed);
            std::thread::spawn(move || request(addr, "POST", CHAT, &[], &body))
        })
        .collect();
    // One client sends its request and never reads the answer.
    let mut silent = connect(addr);
    common::send(&mut silent, "POST", CHAT, &[], &body(7));
    let start = Instant::now();
    while server.metric("llmjp_running_sequences") < 8.0 {
        assert!(start.elapsed() < DEADLINE, "the streams never all ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    server.shutdown();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(3500), "shutdown took {took:?}");
    for reader in readers {
        let response = reader.join().unwrap();
        assert_eq!(response.status, 200);
        let events = response.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(last["error"]["code"], "shutting_down", "{last}");
        assert!(events.len() > 3, "{events:?}");
    }
    // The silent client's connection is closed, not held.
    let answer = read_answer(&mut silent);
    assert_eq!(answer.status, Some(200));
    assert!(TcpStream::connect(addr).is_err());
}
