//! The engine: one thread that owns the model and advances every running request by one
//! batched forward pass per step (continuous batching).
//!
//! Each step the scheduler
//! 1. drops requests whose client went away or whose time ran out;
//! 2. admits waiting requests while the batch has room and the KV budget allows, each
//!    starting from the longest prefix the [`PrefixCache`] holds;
//! 3. plans one pass ([`schedule`], a pure function): one
//!    token for every decoding sequence, then prompt chunks of prefilling ones up to the
//!    step's token budget;
//! 4. runs it, samples a token for every sequence whose prompt is done, streams the text,
//!    and retires finished sequences (their keys and values go to the prefix cache).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llmjp::backend::Backend;
use llmjp::crates::model::{read_f32, KvCache, Sequence};
use llmjp::crates::sampler::processors::LogitsProcessor;
use llmjp::{Decoding, FinishReason, GenerateOptions, Llm, Pipeline, PipelineTask, SamplingParams};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Usage;
use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;
use crate::prefix::PrefixCache;
use crate::schedule::{schedule, SeqState, StepLimits};

/// How the engine schedules.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences in one forward pass.
    pub max_batch: usize,
    /// Most requests waiting; more are refused with 429.
    pub max_queue: usize,
    /// Most tokens in one forward pass (decode tokens and prompt chunks together).
    pub max_step_tokens: usize,
    /// Most prompt tokens of one sequence per pass.
    pub prefill_chunk: usize,
    /// Bytes of KV cache the engine may hold (running sequences and the prefix cache).
    pub kv_budget_bytes: usize,
    /// Most token blocks the prefix cache keeps (0 turns it off).
    pub prefix_cache_blocks: usize,
    /// A request still running after this long ends with a timeout error.
    pub request_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_queue: 256,
            max_step_tokens: 512,
            prefill_chunk: 256,
            kv_budget_bytes: 4 << 30,
            prefix_cache_blocks: 4096,
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// What the engine sends a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text (never empty).
    Text(String),
    /// The end.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// It failed.
    Error(ApiError),
}

/// A request with its prompt encoded, for the engine.
#[derive(Debug)]
pub struct Request {
    /// Prompt ids.
    pub ids: Vec<u32>,
    /// Most new tokens (prompt + this fits the context).
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// OpenAI's frequency and presence penalties.
    pub penalties: (f32, f32),
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// When it arrived.
    pub arrived: Instant,
    /// Where its events go; a dropped receiver cancels it.
    pub events: UnboundedSender<Event>,
}

/// Running, draining (no new requests; running ones finish) or stopping (everything ends).
const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPING: u8 = 2;

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Request>>,
    wake: Condvar,
    state: AtomicU8,
    config: EngineConfig,
    metrics: Arc<Metrics>,
}

/// The engine thread and the queue in front of it.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the engine thread on a loaded model.
    pub fn start(
        llm: Llm,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServerError> {
        if config.max_batch == 0 || config.max_step_tokens == 0 || config.prefill_chunk == 0 {
            return Err(ServerError::InvalidConfig(
                "max_batch, max_step_tokens and prefill_chunk must be at least 1".into(),
            ));
        }
        metrics
            .kv_cache_budget_bytes
            .store(config.kv_budget_bytes as u64, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            state: AtomicU8::new(RUNNING),
            config,
            metrics,
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llmjp-engine".into())
            .spawn(move || llm.run(EngineLoop(&for_thread)))
            .map_err(|source| ServerError::Io {
                context: "starting the engine thread".into(),
                source,
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a request: 429 when the queue is full, 503 once shutting down.
    pub fn submit(&self, request: Request) -> Result<(), ApiError> {
        let mut queue = self.shared.lock_queue();
        if self.shared.state.load(Ordering::Acquire) != RUNNING {
            return Err(ApiError::shutting_down());
        }
        if queue.len() >= self.shared.config.max_queue {
            // Requests whose client has gone make room (admitting them would drop them).
            queue.retain(|waiting| !waiting.events.is_closed());
        }
        if queue.len() >= self.shared.config.max_queue {
            return Err(ApiError::queue_full(queue.len()));
        }
        queue.push_back(request);
        self.shared
            .metrics
            .queue_length
            .store(queue.len() as u64, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Stops taking requests; running ones go on (waiting ones get 503).
    pub fn drain(&self) {
        self.set_state(DRAINING);
    }

    /// Ends every request now (each gets a shutting-down error) and waits for the thread.
    pub fn stop(&self) {
        self.set_state(STOPPING);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Whether the engine thread has ended (drained, stopped or failed).
    pub fn is_finished(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn set_state(&self, state: u8) {
        let _queue = self.shared.lock_queue();
        self.shared.state.fetch_max(state, Ordering::AcqRel);
        self.shared.wake.notify_all();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Request>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One running request.
struct Active<'p, B: Backend> {
    request: Request,
    cache: KvCache<B>,
    /// The token step; its ids (prompt, then generated) are all in the cache but the
    /// last generated one.
    decoding: Decoding<'p>,
    prompt_len: usize,
    usage: Usage,
    last_token: Option<Instant>,
    deadline: Instant,
    done: bool,
}

impl<B: Backend> Active<'_, B> {
    /// Bytes its cache may still grow by, up to its capacity (prompt plus `max_tokens`, at
    /// most the context): whole pages, and a page copied on write.
    fn growth(&self, bytes_per_position: usize, block: usize) -> usize {
        let positions = self.cache.capacity().next_multiple_of(block) + block;
        positions.saturating_sub(self.cache.allocated()) * bytes_per_position
    }

    fn send(&mut self, event: Event) {
        if self.request.events.send(event).is_err() {
            self.done = true;
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.send(Event::Error(error));
        self.done = true;
    }
}

/// The engine loop on one backend; returns when stopped, or drained and idle.
/// The engine thread's loop, as a task [`Llm::run`] runs on the model's backend.
struct EngineLoop<'s>(&'s Shared);

impl PipelineTask for EngineLoop<'_> {
    type Output = ();

    fn run<B: Backend>(self, pipeline: &Pipeline<B>) {
        run(pipeline, self.0)
    }
}

fn run<B: Backend>(pipeline: &Pipeline<B>, shared: &Shared) {
    let model = pipeline.model();
    let config = &shared.config;
    let metrics = &shared.metrics;
    let vocab = model.config().vocab_size;
    let block = model.kv_block_positions();
    let mut prefix = PrefixCache::<B>::new(block, config.prefix_cache_blocks);
    let limits = StepLimits {
        max_step_tokens: config.max_step_tokens,
        prefill_chunk: config.prefill_chunk,
    };
    let mut active: Vec<Active<'_, B>> = Vec::new();
    loop {
        // Admission, or waiting for work.
        {
            let mut queue = shared.lock_queue();
            loop {
                let state = shared.state.load(Ordering::Acquire);
                if state != RUNNING {
                    for request in queue.drain(..) {
                        let _ = request.events.send(Event::Error(ApiError::shutting_down()));
                    }
                }
                if state == STOPPING {
                    for a in &mut active {
                        a.fail(ApiError::shutting_down());
                    }
                    return;
                }
                admit(pipeline, shared, &mut queue, &mut active, &mut prefix);
                metrics
                    .queue_length
                    .store(queue.len() as u64, Ordering::Relaxed);
                if !active.is_empty() {
                    break;
                }
                if state == DRAINING {
                    return;
                }
                metrics.running.store(0, Ordering::Relaxed);
                queue = shared
                    .wake
                    .wait_timeout(queue, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }

        // Cancelled or expired requests leave before the pass.
        let now = Instant::now();
        for a in &mut active {
            if a.request.events.is_closed() {
                a.done = true;
            } else if now > a.deadline {
                a.fail(ApiError::timeout(config.request_timeout));
            }
        }
        active.retain(|a| !a.done);
        if active.is_empty() {
            continue;
        }

        let states: Vec<SeqState> = active
            .iter()
            .map(|a| SeqState {
                cached: a.cache.len(),
                prompt_len: a.prompt_len,
                len: a.decoding.ids().len(),
            })
            .collect();
        let plan = schedule(&states, limits);
        let mut order = Vec::new();
        let mut batch = Vec::new();
        for (i, (a, slot)) in active.iter_mut().zip(&plan.feeds).enumerate() {
            if let Some(range) = slot {
                order.push(i);
                batch.push(Sequence {
                    ids: &a.decoding.ids()[range.clone()],
                    cache: &mut a.cache,
                });
            }
        }
        metrics.batch_size.observe(order.len() as f64);
        let logits = model.forward_batch(&mut batch).and_then(read_f32);
        drop(batch);
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                for &i in &order {
                    active[i].fail(ApiError::internal(format!("the model failed: {e}")));
                }
                active.retain(|a| !a.done);
                continue;
            }
        };
        metrics
            .prefill_tokens
            .fetch_add(plan.prompt_tokens as u64, Ordering::Relaxed);

        for (row, &i) in logits.chunks_exact(vocab).zip(&order) {
            let a = &mut active[i];
            if a.cache.len() < a.prompt_len {
                continue; // mid-prompt
            }
            if a.decoding.ids().len() == a.prompt_len {
                // The prompt is in: later requests starting the same way reuse it.
                prefix.insert(a.decoding.ids(), &a.cache);
            }
            step(a, row, metrics);
            if a.done {
                let cached = a.cache.len();
                prefix.insert(&a.decoding.ids()[..cached], &a.cache);
            }
        }
        active.retain(|a| !a.done);
        metrics
            .running
            .store(active.len() as u64, Ordering::Relaxed);
        metrics
            .kv_cache_bytes
            .store(model.kv_memory().bytes() as u64, Ordering::Relaxed);
        metrics
            .prefix_cache_blocks
            .store(prefix.blocks() as u64, Ordering::Relaxed);
    }
}

/// Admits waiting requests while the batch has room and their KV cache fits the budget.
fn admit<'p, B: Backend>(
    pipeline: &'p Pipeline<B>,
    shared: &Shared,
    queue: &mut VecDeque<Request>,
    active: &mut Vec<Active<'p, B>>,
    prefix: &mut PrefixCache<B>,
) {
    let model = pipeline.model();
    let config = &shared.config;
    let metrics = &shared.metrics;
    let context = model.config().max_position_embeddings;
    let per_position = model.kv_bytes_per_position();
    let block = model.kv_block_positions();
    while active.len() < config.max_batch {
        let Some(request) = queue.front() else { return };
        if request.events.is_closed() {
            queue.pop_front();
            continue;
        }
        if request.arrived.elapsed() > config.request_timeout {
            let request = queue.pop_front().expect("the front request");
            let timeout = ApiError::timeout(config.request_timeout);
            let _ = request.events.send(Event::Error(timeout));
            continue;
        }
        let prompt_len = request.ids.len();
        let positions = (prompt_len + request.max_tokens).min(context);
        // At least the last prompt token runs, for its logits.
        let hit = prefix.lookup(&request.ids, prompt_len - 1, positions);
        let matched = hit.as_ref().map_or(0, |h| h.tokens);
        let shared_positions = matched / block * block;
        let need = (positions.next_multiple_of(block) + block - shared_positions) * per_position;
        let fits = loop {
            let growth: usize = active.iter().map(|a| a.growth(per_position, block)).sum();
            if model.kv_memory().bytes() + growth + need <= config.kv_budget_bytes {
                break true;
            }
            if !prefix.evict() {
                break false;
            }
        };
        if !fits {
            if active.is_empty() {
                let request = queue.pop_front().expect("the front request");
                let _ = request.events.send(Event::Error(ApiError::context_exceeded(format!(
                    "the request needs {need} bytes of KV cache ({positions} positions); the server's budget is {} bytes",
                    config.kv_budget_bytes
                ))));
                continue;
            }
            return; // waits for running requests to finish
        }
        let request = queue.pop_front().expect("the front request");
        let (frequency, presence) = request.penalties;
        let extra: Vec<Arc<dyn LogitsProcessor>> = if frequency != 0.0 || presence != 0.0 {
            vec![Arc::new(OpenAiPenalties {
                frequency,
                presence,
                prompt_len,
            })]
        } else {
            Vec::new()
        };
        let options = GenerateOptions {
            max_new_tokens: positions - prompt_len,
            sampling: request.sampling,
            stop: request.stop.clone(),
            ignore_eos: request.ignore_eos,
            processors: extra,
        };
        let decoding = match pipeline.decoding(&request.ids, &options) {
            Ok(decoding) => decoding,
            Err(e) => {
                let _ = request.events.send(Event::Error(ApiError::invalid(
                    e.to_string(),
                    "temperature",
                )));
                continue;
            }
        };
        let cache = match hit {
            Some(hit) => hit.cache,
            None => model.new_cache(positions),
        };
        metrics
            .prompt_tokens
            .fetch_add(prompt_len as u64, Ordering::Relaxed);
        metrics
            .prefix_cache_hit_tokens
            .fetch_add(cache.len() as u64, Ordering::Relaxed);
        let deadline = request.arrived + config.request_timeout;
        active.push(Active {
            usage: Usage {
                prompt_tokens: prompt_len,
                completion_tokens: 0,
                cached_tokens: cache.len(),
            },
            decoding,
            request,
            cache,
            prompt_len,
            last_token: None,
            deadline,
            done: false,
        });
    }
}

/// Samples the next token of `a` from `logits`, streams its text and ends it when done.
fn step<B: Backend>(a: &mut Active<'_, B>, logits: &[f32], metrics: &Metrics) {
    let step = match a.decoding.accept(logits) {
        Ok(step) => step,
        Err(e) => return a.fail(ApiError::internal(format!("generation failed: {e}"))),
    };
    a.usage.completion_tokens += 1;
    metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    match a.last_token {
        None => metrics
            .time_to_first_token
            .observe((now - a.request.arrived).as_secs_f64()),
        Some(last) => metrics
            .inter_token_latency
            .observe((now - last).as_secs_f64()),
    }
    a.last_token = Some(now);
    if !step.text.is_empty() {
        a.send(Event::Text(step.text));
    }
    let Some(finish) = step.finish else { return };
    metrics
        .request_latency
        .observe((now - a.request.arrived).as_secs_f64());
    let usage = a.usage;
    a.send(Event::Done { finish, usage });
    a.done = true;
}

/// OpenAI's frequency and presence penalties: each generated token's logit is lowered by
/// `frequency × its count + presence` (the prompt is not counted).
#[derive(Debug)]
struct OpenAiPenalties {
    frequency: f32,
    presence: f32,
    prompt_len: usize,
}

impl LogitsProcessor for OpenAiPenalties {
    fn process(&self, logits: &mut [f32], context: &[u32]) {
        let generated = &context[self.prompt_len.min(context.len())..];
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in generated {
            *counts.entry(id).or_default() += 1;
        }
        for (id, n) in counts {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit -= self.frequency * n as f32 + self.presence;
            }
        }
    }
}
