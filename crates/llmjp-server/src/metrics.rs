//! What `GET /metrics` reports, in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters, gauges and histograms of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered, by endpoint and status class.
    requests: Mutex<Vec<((&'static str, u16), u64)>>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generation_tokens: AtomicU64,
    /// Prompt tokens whose keys and values came from the prefix cache (prefill saved).
    pub prefix_cache_hit_tokens: AtomicU64,
    /// Prompt tokens actually prefilled.
    pub prefill_tokens: AtomicU64,
    /// Requests waiting.
    pub queue_length: AtomicU64,
    /// Sequences in the running batch.
    pub running: AtomicU64,
    /// Bytes of KV cache alive.
    pub kv_cache_bytes: AtomicU64,
    /// The KV cache budget.
    pub kv_cache_budget_bytes: AtomicU64,
    /// Entries (token blocks) in the prefix cache.
    pub prefix_cache_blocks: AtomicU64,
    /// Seconds from arrival to the first token.
    pub time_to_first_token: Histogram,
    /// Seconds between consecutive tokens of a stream.
    pub inter_token_latency: Histogram,
    /// Seconds from arrival to the last token.
    pub request_latency: Histogram,
    /// Sequences per forward pass.
    pub batch_size: Histogram,
}

impl Metrics {
    /// Counts a request answered with `status` on `endpoint`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests
            .iter_mut()
            .find(|(key, _)| *key == (endpoint, status))
        {
            Some((_, n)) => *n += 1,
            None => requests.push(((endpoint, status), 1)),
        }
    }

    /// The text `GET /metrics` answers.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        header(
            &mut out,
            "llmjp_requests_total",
            "counter",
            "Requests answered.",
        );
        for ((endpoint, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "llmjp_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        drop(requests);
        let counters = [
            (
                "llmjp_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                &self.prompt_tokens,
            ),
            (
                "llmjp_generation_tokens_total",
                "Tokens generated.",
                &self.generation_tokens,
            ),
            (
                "llmjp_prefill_tokens_total",
                "Prompt tokens run through the model.",
                &self.prefill_tokens,
            ),
            (
                "llmjp_prefix_cache_hit_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled.",
                &self.prefix_cache_hit_tokens,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "llmjp_queue_length",
                "Requests waiting to be admitted.",
                &self.queue_length,
            ),
            (
                "llmjp_running_sequences",
                "Sequences in the running batch.",
                &self.running,
            ),
            (
                "llmjp_kv_cache_bytes",
                "Bytes of KV cache alive.",
                &self.kv_cache_bytes,
            ),
            (
                "llmjp_kv_cache_budget_bytes",
                "The KV cache budget.",
                &self.kv_cache_budget_bytes,
            ),
            (
                "llmjp_prefix_cache_blocks",
                "Token blocks held by the prefix cache.",
                &self.prefix_cache_blocks,
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let histograms = [
            (
                "llmjp_time_to_first_token_seconds",
                "Seconds from a request's arrival to its first token.",
                &self.time_to_first_token,
            ),
            (
                "llmjp_inter_token_latency_seconds",
                "Seconds between consecutive tokens of a request.",
                &self.inter_token_latency,
            ),
            (
                "llmjp_request_latency_seconds",
                "Seconds from a request's arrival to its last token.",
                &self.request_latency,
            ),
            (
                "llmjp_batch_size",
                "Sequences per forward pass.",
                &self.batch_size,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(&mut out, name, "histogram", help);
            histogram.render(&mut out, name);
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A histogram over fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bounds for latencies, seconds.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self::new(SECONDS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                ..HistogramState::default()
            }),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            state.counts[i] += 1;
        }
        state.sum += value;
        state.count += 1;
    }

    fn render(&self, out: &mut String, name: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&state.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", state.count);
        let _ = writeln!(out, "{name}_sum {}", state.sum);
        let _ = writeln!(out, "{name}_count {}", state.count);
    }
}

/// Bounds for batch sizes.
pub const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
