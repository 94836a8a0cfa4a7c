//! Token selection as transformers' `generate` does it: the same logits processors in the
//! same order with the same semantics, then greedy argmax or seeded sampling.
//!
//! Order (transformers' `_get_logits_processor`): repetition penalty (also when greedy),
//! then, when sampling, temperature → top-k → top-p → min-p, then a draw from the softmax.
//!
//! ```
//! use llmjp_sampler::{Sampler, SamplingParams};
//!
//! // The llm-jp model card's settings: temperature 0.7, top-p 0.95, repetition penalty
//! // 1.05 (and transformers' default top-k of 50).
//! let params = SamplingParams::model_card().with_seed(42);
//! let mut sampler = Sampler::new(params)?;
//! let logits = vec![0.5, 2.0, -1.0, 1.5];
//! let context = [1, 3];
//! let first = sampler.sample(&logits, &context)?;
//! // The same seed and logits give the same token on every run.
//! let mut again = Sampler::new(params)?;
//! assert_eq!(again.sample(&logits, &context)?, first);
//!
//! // Temperature 0 is greedy.
//! let mut greedy = Sampler::new(SamplingParams::greedy())?;
//! assert_eq!(greedy.sample(&logits, &context)?, 1);
//!
//! // NaN or infinite logits (broken weights) are an error, not a silent token 0.
//! assert!(greedy.sample(&[0.0, f32::NAN], &context).is_err());
//!
//! // Invalid parameters are refused before any work.
//! assert!(Sampler::new(SamplingParams { top_p: 1.5, ..params }).is_err());
//! # Ok::<(), llmjp_sampler::SamplerError>(())
//! ```

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod processors;
mod rng;

use std::sync::Arc;

use processors::{LogitsProcessor, MinP, RepetitionPenalty, Temperature, TopK, TopP};
pub use rng::Rng;

/// Invalid sampling parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    /// A temperature below 0, NaN or infinite.
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    /// A top-p outside (0, 1].
    TopP(f32),
    #[error("top_k must be at least 1 (leave it unset to disable it), got {0}")]
    /// A top-k of 0.
    TopK(usize),
    #[error("min_p must be in [0, 1], got {0}")]
    /// A min-p outside [0, 1].
    MinP(f32),
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    /// A repetition penalty that is not a positive finite number.
    RepetitionPenalty(f32),
    /// The model produced NaN or infinite logits (broken weights or a numeric overflow):
    /// nothing sensible can be sampled from them.
    #[error("the model produced a non-finite logit ({value}) for token {token}: its weights or configuration are broken")]
    NonFiniteLogits {
        /// The first token whose logit is not finite.
        token: usize,
        /// Its logit.
        value: f32,
    },
}

/// What [`Sampler`] does to each step's logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (transformers' `do_sample=False`).
    pub temperature: f32,
    /// `None` disables top-k (transformers' `top_k=0` or `None`).
    pub top_k: Option<usize>,
    /// 1 disables top-p.
    pub top_p: f32,
    /// `None` disables min-p.
    pub min_p: Option<f32>,
    /// 1 disables the penalty.
    pub repetition_penalty: f32,
    /// Seed of the random stream (the same seed and logits give the same tokens).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::model_card()
    }
}

impl SamplingParams {
    /// The llm-jp-3.1 model card: `do_sample=True, top_p=0.95, temperature=0.7,
    /// repetition_penalty=1.05`, with transformers' default `top_k=50`.
    pub fn model_card() -> Self {
        Self {
            temperature: 0.7,
            top_k: Some(50),
            top_p: 0.95,
            min_p: None,
            repetition_penalty: 1.05,
            seed: 0,
        }
    }

    /// Plain greedy decoding: argmax, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// The same parameters with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether tokens are chosen by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// transformers' processors for these parameters, in its order: the repetition
    /// penalty (when not 1), then, when sampling, temperature, top-k, top-p and min-p.
    pub fn processors(&self) -> Vec<Arc<dyn LogitsProcessor>> {
        self.processors_with(Vec::new())
    }

    /// [`processors`](Self::processors) with `extra` where transformers puts a caller's
    /// `logits_processor` list: after the penalty, before the sampling warpers.
    pub fn processors_with(
        &self,
        extra: Vec<Arc<dyn LogitsProcessor>>,
    ) -> Vec<Arc<dyn LogitsProcessor>> {
        let mut list: Vec<Arc<dyn LogitsProcessor>> = Vec::new();
        if self.repetition_penalty != 1.0 {
            list.push(Arc::new(RepetitionPenalty(self.repetition_penalty)));
        }
        list.extend(extra);
        if !self.is_greedy() {
            if self.temperature != 1.0 {
                list.push(Arc::new(Temperature(self.temperature)));
            }
            if let Some(k) = self.top_k {
                list.push(Arc::new(TopK(k)));
            }
            if self.top_p < 1.0 {
                list.push(Arc::new(TopP(self.top_p)));
            }
            if let Some(min_p) = self.min_p {
                list.push(Arc::new(MinP(min_p)));
            }
        }
        list
    }

    /// Checks every parameter; [`Sampler::new`] calls it.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplerError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplerError::TopP(self.top_p));
        }
        if self.top_k == Some(0) {
            return Err(SamplerError::TopK(0));
        }
        if let Some(min_p) = self.min_p {
            if !(0.0..=1.0).contains(&min_p) {
                return Err(SamplerError::MinP(min_p));
            }
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(SamplerError::RepetitionPenalty(self.repetition_penalty));
        }
        Ok(())
    }
}

/// Chooses the next token from a step's logits: runs its processors in order, then takes
/// the argmax (greedy) or a seeded draw from the softmax.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    processors: Vec<Arc<dyn LogitsProcessor>>,
    rng: Rng,
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler with validated parameters and transformers' processors for them, its
    /// random stream seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self, SamplerError> {
        Self::with_processors(params, Vec::new())
    }

    /// [`new`](Self::new) with the caller's processors added where transformers adds a
    /// `logits_processor` list ([`SamplingParams::processors_with`]).
    pub fn with_processors(
        params: SamplingParams,
        extra: Vec<Arc<dyn LogitsProcessor>>,
    ) -> Result<Self, SamplerError> {
        params.validate()?;
        Ok(Self {
            params,
            processors: params.processors_with(extra),
            rng: Rng::new(params.seed),
            scratch: Vec::new(),
        })
    }

    /// The parameters it samples with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The processors run on each step's logits, in order.
    pub fn processors(&self) -> &[Arc<dyn LogitsProcessor>] {
        &self.processors
    }

    /// Runs the processors on `logits`. `context` holds the ids so far (prompt and
    /// generated), for the repetition penalty.
    pub fn process(&mut self, logits: &mut [f32], context: &[u32]) {
        for processor in &self.processors {
            processor.process(logits, context);
        }
    }

    /// Processes `logits` and picks a token: the argmax when greedy, else a draw from the
    /// softmax of what the processors kept. Logits that are NaN or infinite are an error
    /// (one pass over the row, before any processor).
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Result<u32, SamplerError> {
        if let Some(token) = logits.iter().position(|x| !x.is_finite()) {
            return Err(SamplerError::NonFiniteLogits {
                token,
                value: logits[token],
            });
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(logits);
        self.process(&mut scratch, context);
        let token = if self.params.is_greedy() {
            processors::argmax(&scratch)
        } else {
            self.draw(&scratch)
        };
        self.scratch = scratch;
        Ok(token as u32)
    }

    fn draw(&mut self, logits: &[f32]) -> usize {
        let probs = processors::softmax(logits);
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let mut target = self.rng.next_f64() * total;
        let mut last_kept = processors::argmax(logits);
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last_kept = i;
                target -= p as f64;
                if target < 0.0 {
                    return i;
                }
            }
        }
        last_kept
    }
}

/// The README's examples, compiled as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
