//! A server on a free loopback port with the tiny fixture, and a small HTTP/1.1 client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;

use llmjp::backend::Cpu;
use llmjp::{Llm, LoadOptions, Pipeline};
use llmjp_server::{Server, ServerConfig};
#[allow(unused_imports)]
pub use llmjp_testdata::http::{read_chunk, read_head, request, send, Response};
use serde_json::Value;

pub const MODEL: &str = "tiny";

/// The tokenizer folder, or `None` (the test is skipped) when it is not configured.
pub fn tokenizer_dir() -> Option<PathBuf> {
    let dir = llmjp_testdata::tokenizer_dir();
    if dir.is_none() {
        eprintln!("skipping: LLMJP_TOKENIZER_DIR is not set");
    }
    dir
}

/// The tiny fixture with the real tokenizer, on the CPU in `dtype`.
pub fn pipeline(dtype: llmjp::ComputeDtype) -> Pipeline<Cpu> {
    let options = LoadOptions {
        tokenizer_dir: tokenizer_dir(),
        dtype: dtype.into(),
        ..LoadOptions::default()
    };
    let model = llmjp_testdata::fixture_dir("tiny-llmjp");
    Pipeline::<Cpu>::load(
        model.to_str().unwrap(),
        &options,
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap()
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on the tiny fixture (bf16 on the CPU kernels), `config` changed by
    /// `adjust`.
    pub fn start(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with(pipeline(llmjp::ComputeDtype::BF16), adjust)
    }

    pub fn start_with(pipeline: Pipeline<Cpu>, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new(MODEL);
        config.port = 0;
        adjust(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let server = Server::bind(Llm::Cpu(pipeline), config).await.unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], "")
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        request(self.addr, "POST", path, &[], body)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path, &body.to_string())
    }

    /// A metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
