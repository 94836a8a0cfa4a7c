//! A server on a free loopback port with the tiny fixture, and a small HTTP/1.1 client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;

use llmjp::backend::Cpu;
use llmjp::{Llm, LoadOptions, ModelSource, Pipeline};
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
        &ModelSource::Dir(model),
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

/// The tiny fixture copied with a 4,096-token context (its weights do not depend on the
/// context), so a stream with `ignore_eos` can run for thousands of tokens. The copy lives
/// in a fresh folder under the system's temp dir, removed when the returned guard drops.
pub fn long_context_pipeline() -> (Pipeline<Cpu>, TempFolder) {
    let source = llmjp_testdata::fixture_dir("tiny-llmjp");
    let folder = TempFolder::new("long-context");
    for name in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(source.join(name), folder.0.join(name)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 4096.into();
    std::fs::write(folder.0.join("config.json"), config.to_string()).unwrap();
    let options = LoadOptions {
        tokenizer_dir: tokenizer_dir(),
        dtype: llmjp::ComputeDtype::BF16.into(),
        ..LoadOptions::default()
    };
    let pipeline = Pipeline::<Cpu>::load(
        &ModelSource::Dir(folder.0.clone()),
        &options,
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    (pipeline, folder)
}

/// A folder removed when dropped.
pub struct TempFolder(pub PathBuf);

impl TempFolder {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("llmjp-server-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
