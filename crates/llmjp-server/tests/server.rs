//! The server over HTTP on a loopback port, with the tiny fixture and the real tokenizer:
//! answers, streams, errors, cancellation, batching and shutdown.

mod common;

use std::io::BufReader;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{read_chunk, read_head, request, send, tokenizer_dir, TestServer, MODEL};
use llmjp::{ComputeDtype, GenerateOptions, Message, SamplingParams};
use serde_json::{json, Value};

/// What the library generates greedily for a chat, the reference for the server's answers.
fn expected_chat(user: &str, max_tokens: usize) -> String {
    let pipeline = common::pipeline(ComputeDtype::BF16);
    let options = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    pipeline
        .chat(
            &[Message::system("x"), Message::user(user)],
            &options,
            &mut |_| true,
        )
        .unwrap()
        .text
}

fn chat_body(user: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "repetition_penalty": 1.0,
        "top_k": 0,
        "stream": stream,
    })
}

/// The text of a chat stream, checking its shape: the role first, content deltas, one
/// finish reason, (usage,) `[DONE]` last.
fn stream_text(events: &[String]) -> (String, String) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finishes = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(content) = choice["delta"]["content"].as_str() {
            assert!(!content.is_empty());
            text.push_str(content);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finishes.push(reason.to_owned());
        }
    }
    assert_eq!(finishes.len(), 1, "{events:?}");
    (text, finishes.pop().unwrap())
}

#[test]
fn chat_answers_as_the_library_generates() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|_| {});
    let expected = expected_chat("こんにちは", 12);
    let response = server.post_json("/v1/chat/completions", &chat_body("こんにちは", 12, false));
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt_tokens + 12);

    // The same, streamed, with the usage at the end; the prompt now comes from the cache.
    let mut body = chat_body("こんにちは", 12, true);
    body["stream_options"] = json!({"include_usage": true});
    let response = server.post_json("/v1/chat/completions", &body);
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = response.events();
    let (text, finish) = stream_text(&events);
    assert_eq!(text, expected);
    assert_eq!(finish, "length");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    assert_eq!(
        usage["usage"]["prompt_tokens"].as_u64().unwrap(),
        prompt_tokens
    );
    let cached = usage["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, prompt_tokens - 1);
    assert_eq!(
        server.metric("llmjp_prefix_cache_hit_tokens_total"),
        cached as f64
    );
}

#[test]
fn completions_take_raw_text_and_stop_strings() {
    let Some(_) = tokenizer_dir() else { return };
    let pipeline = common::pipeline(ComputeDtype::BF16);
    let options = GenerateOptions {
        max_new_tokens: 10,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    let ids = pipeline.encode_raw("昔々あるところに").unwrap();
    let expected = pipeline
        .generate(&ids, &options, &mut |_| true)
        .unwrap()
        .text;
    let server = TestServer::start(|_| {});
    let body = json!({"prompt": "昔々あるところに", "max_tokens": 10, "temperature": 0.0,
                      "repetition_penalty": 1.0, "top_k": -1});
    let response = server.post_json("/v1/completions", &body);
    assert_eq!(response.status, 200, "{}", response.body);
    let answer = response.json();
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], expected.as_str());
    assert_eq!(answer["usage"]["prompt_tokens"], ids.len());

    // Streamed: the chunks add up to the same text.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = server.post_json("/v1/completions", &streamed).events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, expected);

    // A stop string ends the text before it, with finish_reason "stop".
    let stop: String = expected.chars().skip(3).take(2).collect();
    let cut = &expected[..expected.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let answer = server.post_json("/v1/completions", &stopped).json();
    assert_eq!(answer["choices"][0]["text"], cut);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[test]
fn models_health_and_metrics() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|_| {});
    let models = server.get("/v1/models");
    assert_eq!(models.status, 200);
    let models = models.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");
    let health = server.get("/health");
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );
    server.post_json("/v1/chat/completions", &chat_body("a", 3, false));
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    for name in [
        "llmjp_requests_total{endpoint=\"chat\",status=\"200\"} 1",
        "llmjp_generation_tokens_total 3",
        "llmjp_queue_length 0",
        "llmjp_time_to_first_token_seconds_count 1",
        "llmjp_inter_token_latency_seconds_count 2",
        "llmjp_batch_size_bucket{le=\"+Inf\"}",
        "llmjp_prefix_cache_hit_tokens_total 0",
    ] {
        assert!(
            metrics.body.contains(name),
            "{name} not in\n{}",
            metrics.body
        );
    }
}

/// Checks the status and the OpenAI error object.
fn assert_error(response: &common::Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(response.status, status, "{}", response.body);
    let body = response.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "{body}"
    );
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
    error.clone()
}

#[test]
fn bad_requests_get_openai_errors() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| c.max_body_bytes = 4096);
    let chat = "/v1/chat/completions";
    assert_error(&server.post(chat, "{not json"), 400, None);
    assert_error(&server.post(chat, "[1, 2]"), 400, None);
    assert_error(&server.post(chat, r#"{"messages": "hi"}"#), 400, None);
    let error = assert_error(
        &server.post_json(
            chat,
            &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "a"}]}),
        ),
        404,
        Some("model"),
    );
    assert_eq!(error["code"], "model_not_found");
    for (field, value) in [
        ("temperature", json!(5)),
        ("temperature", json!(-1)),
        ("top_p", json!(0)),
        ("n", json!(2)),
        ("max_tokens", json!(0)),
        ("frequency_penalty", json!(3)),
        ("presence_penalty", json!(-2.5)),
        ("repetition_penalty", json!(0)),
        ("top_k", json!(-5)),
        ("min_p", json!(1.5)),
        ("logprobs", json!(true)),
    ] {
        let mut body = chat_body("a", 4, false);
        body[field] = value;
        assert_error(&server.post_json(chat, &body), 400, Some(field));
    }
    assert_error(
        &server.post_json(chat, &json!({"messages": []})),
        400,
        Some("messages"),
    );
    // Longer than the context (64 positions): the prompt alone, and with max_tokens.
    let long = "長い文章です。".repeat(30);
    let error = assert_error(
        &server.post_json(chat, &chat_body(&long, 4, false)),
        400,
        None,
    );
    assert_eq!(error["code"], "context_length_exceeded");
    let error = assert_error(
        &server.post_json(chat, &chat_body("a", 60, false)),
        400,
        None,
    );
    assert_eq!(error["code"], "context_length_exceeded");
    // Over the body limit.
    let big = json!({"prompt": "x".repeat(5000)}).to_string();
    let error = assert_error(&server.post("/v1/completions", &big), 413, None);
    assert_eq!(error["code"], "request_too_large");
    let prompt_list = json!({"prompt": ["a", "b"]});
    assert_error(
        &server.post_json("/v1/completions", &prompt_list),
        400,
        Some("prompt"),
    );
    assert_error(&server.get("/v1/nothing"), 404, None);
    assert_error(&server.get("/v1/chat/completions"), 405, None);
    // The server still answers.
    assert_eq!(
        server.post_json(chat, &chat_body("a", 2, false)).status,
        200
    );
}

#[test]
fn an_api_key_guards_the_v1_routes() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| c.api_key = Some("sesame".into()));
    let body = chat_body("a", 2, false).to_string();
    let path = "/v1/chat/completions";
    let error = assert_error(&request(server.addr, "POST", path, &[], &body), 401, None);
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = [("Authorization", "Bearer open")];
    assert_error(
        &request(server.addr, "POST", path, &wrong, &body),
        401,
        None,
    );
    assert_error(
        &request(server.addr, "GET", "/v1/models", &wrong, ""),
        401,
        None,
    );
    let right = [("Authorization", "Bearer sesame")];
    assert_eq!(
        request(server.addr, "POST", path, &right, &body).status,
        200
    );
    // Health and metrics stay open (for load balancers and scrapers).
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| c.engine.max_queue = 0);
    let response = server.post_json("/v1/chat/completions", &chat_body("a", 2, false));
    let error = assert_error(&response, 429, None);
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(response.header("retry-after"), Some("1"));
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|_| {});
    let mut body = chat_body("a", 30, true);
    body["ignore_eos"] = json!(true);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send(
        &mut stream,
        "POST",
        "/v1/chat/completions",
        &[],
        &body.to_string(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    read_chunk(&mut reader).unwrap(); // the role chunk
    drop(reader); // gone mid-stream
    let start = Instant::now();
    while server.metric("llmjp_running_sequences") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sequence is still running"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Freed before it had generated what it asked for.
    assert!(server.metric("llmjp_generation_tokens_total") < 30.0);
    // Others are served as before.
    assert_eq!(
        server
            .post_json("/v1/chat/completions", &chat_body("b", 3, false))
            .status,
        200
    );
}

#[test]
fn concurrent_streams_get_the_texts_they_get_alone() {
    let Some(_) = tokenizer_dir() else { return };
    let users: Vec<String> = (0..32)
        .map(|i| format!("質問{i}: {}", "あいう".repeat(i % 4)))
        .collect();
    // Odd ones sample (seeded), even ones are greedy.
    let body = |i: usize, stream: bool| {
        let mut body = chat_body(&users[i], 16, stream);
        if i % 2 == 1 {
            body["temperature"] = json!(0.8);
            body["seed"] = json!(i);
        }
        body
    };
    let server = TestServer::start(|c| c.engine.max_batch = 16);
    let alone: Vec<String> = (0..users.len())
        .map(|i| {
            server
                .post_json("/v1/chat/completions", &body(i, false))
                .json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let addr = server.addr;
    let together: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..users.len())
            .map(|i| {
                let body = body(i, true).to_string();
                scope.spawn(move || {
                    let response = request(addr, "POST", "/v1/chat/completions", &[], &body);
                    assert_eq!(response.status, 200, "{}", response.body);
                    stream_text(&response.events())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, ((text, finish), expected)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(text, expected, "stream {i}");
        assert!(
            finish == "length" || finish == "stop",
            "stream {i}: {finish}"
        );
    }
    // They ran batched.
    let metrics = server.get("/metrics").body;
    let single_steps: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("llmjp_batch_size_bucket{le=\"1\"} ")?
                .parse()
                .ok()
        })
        .unwrap();
    let steps = server.metric("llmjp_batch_size_count");
    assert!(steps - single_steps > 0.0, "no batched step in\n{metrics}");
}

#[test]
fn shutdown_lets_running_streams_finish() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let mut body = chat_body("a", 30, true);
    body["ignore_eos"] = json!(true);
    let body = body.to_string();
    let client =
        std::thread::spawn(move || request(addr, "POST", "/v1/chat/completions", &[], &body));
    // Wait for the stream to start, then shut down while it runs.
    let start = Instant::now();
    while server.metric("llmjp_generation_tokens_total") < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    server.shutdown();
    let response = client.join().unwrap();
    let (_, finish) = stream_text(&response.events());
    assert_eq!(finish, "length");
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn f32_streams_batched_give_exactly_what_they_give_alone() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start_with(common::pipeline(ComputeDtype::F32), |_| {});
    let users: Vec<String> = (0..8).map(|i| format!("f32の質問{i}")).collect();
    let alone: Vec<Value> = users
        .iter()
        .map(|u| {
            server
                .post_json("/v1/chat/completions", &chat_body(u, 12, false))
                .json()
        })
        .collect();
    let addr = server.addr;
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let body = chat_body(u, 12, false).to_string();
                scope
                    .spawn(move || request(addr, "POST", "/v1/chat/completions", &[], &body).json())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in alone.iter().zip(&together) {
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    }
    let steps = server.metric("llmjp_batch_size_count");
    let sequences = server.metric("llmjp_batch_size_sum");
    assert!(sequences > steps, "nothing ran batched");
}

#[test]
fn prompts_prefilled_in_small_chunks_answer_the_same() {
    let Some(_) = tokenizer_dir() else { return };
    let expected = expected_chat("チャンクに分けて読む長めの質問です", 8);
    let server = TestServer::start(|c| {
        c.engine.prefill_chunk = 4;
        c.engine.max_step_tokens = 5;
        c.engine.prefix_cache_blocks = 0;
    });
    let response = server.post_json(
        "/v1/chat/completions",
        &chat_body("チャンクに分けて読む長めの質問です", 8, false),
    );
    let body = response.json();
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
    let prompt = body["usage"]["prompt_tokens"].as_f64().unwrap();
    // Every prompt token ran, 4 at a time: at least prompt / 4 passes before the first token.
    assert_eq!(server.metric("llmjp_prefill_tokens_total"), prompt);
    assert!(server.metric("llmjp_batch_size_count") >= (prompt / 4.0).ceil() + 7.0);
}

#[test]
fn requests_wait_for_kv_cache_room_and_oversized_ones_are_refused() {
    let Some(_) = tokenizer_dir() else { return };
    let pipeline = common::pipeline(ComputeDtype::BF16);
    // Room for one request of up to 64 positions (plus a page of slack) at a time.
    let per_position = pipeline.model().kv_bytes_per_position();
    let budget = per_position * (64 + 32 + 16);
    let server = TestServer::start_with(pipeline, |c| {
        c.engine.kv_budget_bytes = budget;
        c.engine.prefix_cache_blocks = 0;
    });
    let addr = server.addr;
    let answers: Vec<common::Response> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let body = chat_body(&format!("順番{i}"), 8, false).to_string();
                scope.spawn(move || request(addr, "POST", "/v1/chat/completions", &[], &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // They ran one at a time: no pass had two sequences.
    assert_eq!(
        server.metric("llmjp_batch_size_sum"),
        server.metric("llmjp_batch_size_count")
    );
    assert!(server.metric("llmjp_kv_cache_bytes") <= budget as f64);

    // A budget smaller than one request's need is an error, not a wait.
    let server = TestServer::start(|c| c.engine.kv_budget_bytes = 1000);
    let response = server.post_json("/v1/chat/completions", &chat_body("a", 8, false));
    let error = assert_error(&response, 400, None);
    assert!(
        error["message"].as_str().unwrap().contains("KV cache"),
        "{error}"
    );
}

#[test]
fn requests_past_the_time_limit_get_408() {
    let Some(_) = tokenizer_dir() else { return };
    let server = TestServer::start(|c| c.engine.request_timeout = Duration::ZERO);
    let error = assert_error(
        &server.post_json("/v1/chat/completions", &chat_body("a", 4, false)),
        408,
        None,
    );
    assert_eq!(error["code"], "timeout");
    // Streamed: the error is an event, then [DONE].
    let events = server
        .post_json("/v1/chat/completions", &chat_body("a", 4, true))
        .events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "timeout");
}
