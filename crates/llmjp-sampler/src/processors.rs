//! The logits processors of transformers' `generate`, one function each, with its semantics,
//! and the same as [`LogitsProcessor`] values that [`Sampler`](crate::Sampler) runs in a list.
//! Filtered tokens get `-inf`, as transformers' `filter_value`.

use std::fmt;

/// One step from a step's logits towards the next token, as transformers'
/// `LogitsProcessor`: it changes the logits in place. [`SamplingParams::processors`]
/// builds transformers' list; a caller adds its own with
/// [`Sampler::with_processors`](crate::Sampler::with_processors).
///
/// [`SamplingParams::processors`]: crate::SamplingParams::processors
///
/// ```
/// use std::sync::Arc;
/// use llmjp_sampler::processors::LogitsProcessor;
/// use llmjp_sampler::{Sampler, SamplingParams};
///
/// /// Never picks token 0.
/// #[derive(Debug)]
/// struct BanZero;
///
/// impl LogitsProcessor for BanZero {
///     fn process(&self, logits: &mut [f32], _context: &[u32]) {
///         logits[0] = f32::NEG_INFINITY;
///     }
/// }
///
/// let mut sampler = Sampler::with_processors(SamplingParams::greedy(), vec![Arc::new(BanZero)])?;
/// assert_eq!(sampler.sample(&[9.0, 1.0, 2.0], &[])?, 2);
/// # Ok::<(), llmjp_sampler::SamplerError>(())
/// ```
pub trait LogitsProcessor: fmt::Debug + Send + Sync {
    /// Changes `logits` in place; `context` holds the ids so far (prompt and generated).
    fn process(&self, logits: &mut [f32], context: &[u32]);
}

/// [`repetition_penalty`] with this penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepetitionPenalty(pub f32);

/// [`temperature`] with this temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(pub f32);

/// [`top_k`] with this k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK(pub usize);

/// [`top_p`] with this p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopP(pub f32);

/// [`min_p`] with this ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP(pub f32);

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, logits: &mut [f32], context: &[u32]) {
        repetition_penalty(logits, context, self.0);
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, logits: &mut [f32], _context: &[u32]) {
        temperature(logits, self.0);
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, logits: &mut [f32], _context: &[u32]) {
        top_k(logits, self.0);
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, logits: &mut [f32], _context: &[u32]) {
        top_p(logits, self.0);
    }
}

impl LogitsProcessor for MinP {
    fn process(&self, logits: &mut [f32], _context: &[u32]) {
        min_p(logits, self.0);
    }
}

/// `RepetitionPenaltyLogitsProcessor`: for every id in `context` (prompt and generated
/// text), a positive logit is divided by `penalty` and a negative one multiplied. As in
/// transformers (gather, then scatter), every penalised value comes from the logits as they
/// were, so an id is penalised once however often it occurs.
pub fn repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let penalised: Vec<(usize, f32)> = context
        .iter()
        .map(|&id| id as usize)
        .filter(|&id| id < logits.len())
        .map(|id| {
            let x = logits[id];
            (id, if x < 0.0 { x * penalty } else { x / penalty })
        })
        .collect();
    for (id, value) in penalised {
        logits[id] = value;
    }
}

/// `TemperatureLogitsWarper`: `logits / temperature`.
pub fn temperature(logits: &mut [f32], temperature: f32) {
    if temperature == 1.0 {
        return;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if (max.abs() / temperature).is_finite() {
        logits.iter_mut().for_each(|x| *x /= temperature);
    } else {
        // A tiny temperature would overflow to inf and make the softmax NaN. Shifting by the
        // maximum first gives the same distribution (the limit: greedy among the maxima).
        logits
            .iter_mut()
            .for_each(|x| *x = (*x - max) / temperature);
    }
}

/// `TopKLogitsWarper`: removes every logit below the k-th largest (ties with it are kept).
pub fn top_k(logits: &mut [f32], k: usize) {
    let k = k.max(1);
    if k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    logits
        .iter_mut()
        .filter(|x| **x < threshold)
        .for_each(|x| *x = f32::NEG_INFINITY);
}

/// `TopPLogitsWarper`: keeps the smallest set of most likely tokens whose probability mass
/// reaches `p` (always at least one). Computed as transformers does: sort ascending, remove
/// tokens whose cumulative mass is `<= 1 - p`.
pub fn top_p(logits: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    // Filtered tokens (-inf) have probability 0 and stay filtered: sorting only the others
    // gives the same result, and after top-k it is a handful instead of the vocabulary.
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] != f32::NEG_INFINITY)
        .collect();
    if order.is_empty() {
        return;
    }
    order.sort_unstable_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let sorted: Vec<f32> = order.iter().map(|&i| logits[i]).collect();
    let probs = softmax(&sorted);
    let threshold = (1.0 - p as f64) as f32;
    let mut cumulative = 0.0f32;
    // The last (most likely) token is always kept.
    for (rank, &i) in order.iter().enumerate().take(order.len() - 1) {
        cumulative += probs[rank];
        if cumulative <= threshold {
            logits[i] = f32::NEG_INFINITY;
        } else {
            break;
        }
    }
}

/// `MinPLogitsWarper`: removes tokens whose probability is below `min_p` times the
/// probability of the most likely token (the most likely one is always kept).
pub fn min_p(logits: &mut [f32], min_p: f32) {
    let probs = softmax(logits);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let threshold = min_p * top;
    let best = argmax(logits);
    for (i, (x, p)) in logits.iter_mut().zip(&probs).enumerate() {
        if *p < threshold && i != best {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Probabilities of `logits` (f32, max-subtracted, as torch's softmax).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}
