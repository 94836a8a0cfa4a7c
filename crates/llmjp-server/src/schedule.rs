//! What one forward pass runs: a pure function from the running sequences to a plan
//! ([`schedule`]), as vLLM's `schedule() -> SchedulerOutput`; the engine executes it.
//!
//! Decoding sequences come first, one token each; what is left of the step's token budget
//! goes to prompt chunks of prefilling sequences, in order, at most `prefill_chunk` tokens
//! each. A long prompt is prefilled over several passes, so running streams wait at most
//! one chunk. When no sequence decodes, every prefilling one gets at least a token however
//! small the budget.

use std::ops::Range;

/// Where one running sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqState {
    /// Positions already in its KV cache.
    pub cached: usize,
    /// Its prompt's length.
    pub prompt_len: usize,
    /// Its ids: the prompt, then the tokens generated (all but the last are cached).
    pub len: usize,
}

/// The limits of one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Most tokens in the pass.
    pub max_step_tokens: usize,
    /// Most prompt tokens of one sequence in the pass.
    pub prefill_chunk: usize,
}

/// One pass: which ids of each running sequence it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepPlan {
    /// For each running sequence, in order, the range of its ids to feed; `None` for one
    /// that waits this pass.
    pub feeds: Vec<Option<Range<usize>>>,
    /// Prompt tokens the pass prefills.
    pub prompt_tokens: usize,
}

impl StepPlan {
    /// Whether sequence `i` reaches the end of its prompt in this pass (its logits give a
    /// token).
    pub fn samples(&self, i: usize, seq: &SeqState) -> bool {
        self.feeds[i]
            .as_ref()
            .is_some_and(|range| range.end >= seq.prompt_len)
    }
}

/// Plans one pass over `running` (see the module docs).
///
/// ```
/// use llmjp_server::schedule::{schedule, SeqState, StepLimits};
///
/// let limits = StepLimits { max_step_tokens: 8, prefill_chunk: 4 };
/// let decoding = SeqState { cached: 10, prompt_len: 6, len: 11 };
/// let prefilling = SeqState { cached: 0, prompt_len: 20, len: 20 };
/// let plan = schedule(&[prefilling, decoding], limits);
/// assert_eq!(plan.feeds, [Some(0..4), Some(10..11)]);
/// assert_eq!(plan.prompt_tokens, 4);
/// ```
pub fn schedule(running: &[SeqState], limits: StepLimits) -> StepPlan {
    let mut feeds: Vec<Option<Range<usize>>> = vec![None; running.len()];
    let mut budget = limits.max_step_tokens;
    for (feed, seq) in feeds.iter_mut().zip(running) {
        if seq.cached >= seq.prompt_len {
            *feed = Some(seq.cached..seq.len);
            budget = budget.saturating_sub(1);
        }
    }
    let decoding_any = feeds.iter().any(Option::is_some);
    let mut prompt_tokens = 0;
    for (feed, seq) in feeds.iter_mut().zip(running) {
        if seq.cached < seq.prompt_len && (budget > 0 || !decoding_any) {
            let n = (seq.prompt_len - seq.cached)
                .min(limits.prefill_chunk)
                .min(budget.max(1));
            *feed = Some(seq.cached..seq.cached + n);
            budget = budget.saturating_sub(n);
            prompt_tokens += n;
        }
    }
    StepPlan {
        feeds,
        prompt_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: StepLimits = StepLimits {
        max_step_tokens: 10,
        prefill_chunk: 4,
    };

    fn decoding(cached: usize) -> SeqState {
        SeqState {
            cached,
            prompt_len: 3,
            len: cached + 1,
        }
    }

    fn prefilling(cached: usize, prompt_len: usize) -> SeqState {
        SeqState {
            cached,
            prompt_len,
            len: prompt_len,
        }
    }

    #[test]
    fn decoding_sequences_take_one_token_each_before_any_prompt() {
        let running = [prefilling(0, 100), decoding(5), decoding(7)];
        let plan = schedule(&running, LIMITS);
        assert_eq!(plan.feeds, [Some(0..4), Some(5..6), Some(7..8)]);
        assert_eq!(plan.prompt_tokens, 4);
        assert!(plan.samples(1, &running[1]) && !plan.samples(0, &running[0]));
    }

    #[test]
    fn prompt_chunks_share_what_the_budget_leaves_in_order() {
        let limits = StepLimits {
            max_step_tokens: 7,
            prefill_chunk: 4,
        };
        let running = [
            prefilling(0, 9),
            prefilling(2, 4),
            decoding(3),
            prefilling(0, 5),
        ];
        let plan = schedule(&running, limits);
        // 1 decode token, then 4 + 2 of the 6 left; the last prompt waits.
        assert_eq!(plan.feeds, [Some(0..4), Some(2..4), Some(3..4), None]);
        assert_eq!(plan.prompt_tokens, 6);
        assert!(plan.samples(1, &running[1]), "its prompt ends this pass");
    }

    #[test]
    fn a_pass_without_decoding_still_prefills_and_a_full_one_waits() {
        let tiny = StepLimits {
            max_step_tokens: 0,
            prefill_chunk: 4,
        };
        let plan = schedule(&[prefilling(0, 10), prefilling(0, 10)], tiny);
        assert_eq!(plan.feeds, [Some(0..1), Some(0..1)]);
        // Budget spent on decoding: prompts wait.
        let one = StepLimits {
            max_step_tokens: 1,
            prefill_chunk: 4,
        };
        let plan = schedule(&[decoding(4), prefilling(0, 10)], one);
        assert_eq!(plan.feeds, [Some(4..5), None]);
        assert_eq!(plan.prompt_tokens, 0);
        assert_eq!(schedule(&[], LIMITS), StepPlan::default());
    }
}
