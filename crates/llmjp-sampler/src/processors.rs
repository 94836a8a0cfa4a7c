//! The logits processors of transformers' `generate`, one function each, with its semantics.
//! Filtered tokens get `-inf`, as transformers' `filter_value`.

/// `RepetitionPenaltyLogitsProcessor`: for every id in `context` (prompt and generated
/// text), a positive logit is divided by `penalty` and a negative one multiplied.
pub fn repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32, seen: &mut Vec<bool>) {
    if penalty == 1.0 {
        return;
    }
    // Each id once, however often it occurs.
    seen.clear();
    seen.resize(logits.len(), false);
    for &id in context {
        let id = id as usize;
        if id < logits.len() && !seen[id] {
            seen[id] = true;
            let x = logits[id];
            logits[id] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// `TemperatureLogitsWarper`: `logits / temperature`.
pub fn temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        logits.iter_mut().for_each(|x| *x /= temperature);
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
