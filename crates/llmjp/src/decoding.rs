//! [`Decoding`]: one sequence's token step — sample, end-of-sequence, streaming decode,
//! stop strings, token budget, the text held back flushed at the end — shared by
//! [`Pipeline::generate`](crate::Pipeline::generate) and every sequence of a server.

use llmjp_sampler::{Sampler, SamplerError};
use llmjp_tokenizer::{StreamDecoder, Tokenizer};

use crate::stop::StopMatcher;
use crate::{LlmError, Result};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// The text reached a stop string.
    Stop,
    /// The model's context is full.
    Context,
    /// The caller asked to stop ([`Decoding::cancel`]).
    Cancelled,
}

impl FinishReason {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
            Self::Stop => "stop",
            Self::Context => "context",
            Self::Cancelled => "cancelled",
        }
    }

    /// OpenAI's `finish_reason`: `stop` for an end-of-sequence token, a stop string or a
    /// cancelled request; `length` for the token budget or a full context.
    pub fn openai(self) -> &'static str {
        match self {
            Self::Eos | Self::Stop | Self::Cancelled => "stop",
            Self::Length | Self::Context => "length",
        }
    }
}

/// What one [`Decoding::accept`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The token chosen.
    pub token: u32,
    /// Text now safe to show (possibly empty: a character still incomplete, or text that
    /// could become a stop string, is held back). When the step finishes the sequence it
    /// includes everything held back, up to a stop string.
    pub text: String,
    /// Why the sequence ended, if this step ended it.
    pub finish: Option<FinishReason>,
}

/// The limits of one sequence's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBudget {
    /// Most tokens to generate (the end-of-sequence token counts, as in transformers).
    pub max_new_tokens: usize,
    /// The model's context: prompt and generated tokens together stop at it.
    pub context: usize,
}

/// One sequence being generated, a token at a time: feed it the logits of its last
/// position ([`accept`](Self::accept)) and it picks the next token and says what text it
/// adds and whether the sequence is done.
///
/// ```
/// use llmjp::{Decoding, FinishReason, Sampler, SamplingParams, TokenBudget};
///
/// # fn main() -> Result<(), llmjp::LlmError> {
/// # let Some(dir) = llmjp_testdata::tokenizer_dir() else { return Ok(()) };
/// let tokenizer = llmjp::Tokenizer::from_dir(&dir)?;
/// let sampler = Sampler::new(SamplingParams::greedy())?;
/// let budget = TokenBudget { max_new_tokens: 2, context: 4096 };
/// let mut decoding = Decoding::new(&tokenizer, &[2], &[1, 100], sampler, budget, &[], false);
/// let mut logits = vec![0.0f32; 99584];
/// logits[1000] = 10.0;
/// let step = decoding.accept(&logits)?;
/// assert_eq!((step.token, step.finish), (1000, None));
/// logits[2] = 20.0; // end of sequence
/// let step = decoding.accept(&logits)?;
/// assert_eq!(step.finish, Some(FinishReason::Eos));
/// assert_eq!(decoding.generated(), &[1000, 2]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Decoding<'t> {
    sampler: Sampler,
    stream: StreamDecoder<'t>,
    stops: StopMatcher,
    eos_ids: &'t [u32],
    ignore_eos: bool,
    budget: TokenBudget,
    /// The prompt, then every generated id.
    ids: Vec<u32>,
    prompt_len: usize,
    finish: Option<FinishReason>,
}

impl<'t> Decoding<'t> {
    /// A sequence after `prompt_ids`, choosing tokens with `sampler`, ending at one of
    /// `eos_ids` (unless `ignore_eos`), at a stop string, or at the budget.
    pub fn new(
        tokenizer: &'t Tokenizer,
        eos_ids: &'t [u32],
        prompt_ids: &[u32],
        sampler: Sampler,
        budget: TokenBudget,
        stop: &[String],
        ignore_eos: bool,
    ) -> Self {
        Self {
            sampler,
            stream: tokenizer.stream_decoder(true),
            stops: StopMatcher::new(stop),
            eos_ids,
            ignore_eos,
            budget,
            ids: prompt_ids.to_vec(),
            prompt_len: prompt_ids.len(),
            finish: None,
        }
    }

    /// Picks the next token from `logits` (the last position's, f32) and returns what it
    /// adds. An error (non-finite logits, a token the tokenizer cannot decode) leaves the
    /// sequence as it was.
    pub fn accept(&mut self, logits: &[f32]) -> Result<Step> {
        if let Some(finish) = self.finish {
            return Err(LlmError::InvalidOption(format!(
                "the sequence already finished ({})",
                finish.as_str()
            )));
        }
        let token = self
            .sampler
            .sample(logits, &self.ids)
            .map_err(|e| match e {
                SamplerError::NonFiniteLogits { token, value } => LlmError::NonFiniteLogits {
                    step: self.generated().len(),
                    token,
                    value,
                },
                other => LlmError::Sampler(other),
            })?;
        self.ids.push(token);
        let mut text = String::new();
        let mut finish = None;
        if !self.ignore_eos && self.eos_ids.contains(&token) {
            finish = Some(FinishReason::Eos);
        } else if let Some(chunk) = self.stream.step(token)? {
            let (released, stopped) = self.stops.push(&chunk);
            text = released;
            if stopped {
                finish = Some(FinishReason::Stop);
            }
        }
        if finish.is_none() {
            if self.generated().len() >= self.budget.max_new_tokens {
                finish = Some(FinishReason::Length);
            } else if self.ids.len() >= self.budget.context {
                finish = Some(FinishReason::Context);
            }
        }
        if let Some(reason) = finish {
            let (tail, reason) = self.end(reason)?;
            text.push_str(&tail);
            finish = Some(reason);
        }
        Ok(Step {
            token,
            text,
            finish,
        })
    }

    /// Ends the sequence at the caller's request: returns what was held back (a stop
    /// string in it still counts) and why it ended.
    pub fn cancel(&mut self) -> Result<(String, FinishReason)> {
        match self.finish {
            Some(finish) => Ok((String::new(), finish)),
            None => self.end(FinishReason::Cancelled),
        }
    }

    /// Finishes with `reason`: the decoder's and the stop matcher's held-back text, cut at
    /// a stop string (which then becomes the reason).
    fn end(&mut self, reason: FinishReason) -> Result<(String, FinishReason)> {
        let mut reason = reason;
        let mut text = String::new();
        if reason != FinishReason::Stop {
            let tail = self.stream.finish()?.unwrap_or_default();
            let (released, stopped) = self.stops.push(&tail);
            text = released;
            if stopped {
                reason = FinishReason::Stop;
            } else {
                text.push_str(&self.stops.finish());
            }
        }
        self.finish = Some(reason);
        Ok((text, reason))
    }

    /// The prompt and every token chosen so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The tokens chosen so far.
    pub fn generated(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }

    /// The prompt's length.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Why the sequence ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }
}

#[cfg(test)]
mod tests {
    use llmjp_sampler::SamplingParams;

    use super::*;

    const VOCAB: usize = 99_584;

    fn tokenizer() -> Option<Tokenizer> {
        llmjp_testdata::tokenizer_dir().map(|dir| Tokenizer::from_dir(dir).unwrap())
    }

    fn one_hot(id: u32) -> Vec<f32> {
        let mut logits = vec![0.0; VOCAB];
        logits[id as usize] = 10.0;
        logits
    }

    fn decoding<'t>(
        tokenizer: &'t Tokenizer,
        budget: TokenBudget,
        stop: &[String],
    ) -> Decoding<'t> {
        let sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        Decoding::new(tokenizer, &[2], &[1], sampler, budget, stop, false)
    }

    const ROOMY: TokenBudget = TokenBudget {
        max_new_tokens: 100,
        context: 4096,
    };

    /// Feeds the tokens of `text` one by one; returns the texts and the finish.
    fn feed(decoding: &mut Decoding<'_>, ids: &[u32]) -> (String, Option<FinishReason>) {
        let mut text = String::new();
        for &id in ids {
            let step = decoding.accept(&one_hot(id)).unwrap();
            assert_eq!(step.token, id);
            text.push_str(&step.text);
            if step.finish.is_some() {
                return (text, step.finish);
            }
        }
        (text, None)
    }

    #[test]
    fn streamed_text_is_the_decoded_text_and_ends_at_the_budget() {
        let Some(tokenizer) = tokenizer() else { return };
        let ids = tokenizer.encode("自然言語処理とは、", false).unwrap();
        let budget = TokenBudget {
            max_new_tokens: ids.len(),
            context: 4096,
        };
        let mut d = decoding(&tokenizer, budget, &[]);
        let (text, finish) = feed(&mut d, &ids);
        assert_eq!(text, "自然言語処理とは、");
        assert_eq!(finish, Some(FinishReason::Length));
        assert_eq!(d.generated(), ids.as_slice());
        assert!(
            d.accept(&one_hot(5)).is_err(),
            "finished sequences take no more"
        );
        // The context ends a sequence as well.
        let budget = TokenBudget {
            max_new_tokens: 100,
            context: 3,
        };
        let mut d = decoding(&tokenizer, budget, &[]);
        assert_eq!(feed(&mut d, &ids).1, Some(FinishReason::Context));
        assert_eq!(d.ids().len(), 3);
    }

    #[test]
    fn a_stop_string_across_tokens_cuts_the_text_before_it() {
        let Some(tokenizer) = tokenizer() else { return };
        let ids = tokenizer.encode("今日は晴れです。明日は雨", false).unwrap();
        let mut d = decoding(&tokenizer, ROOMY, &["です。明".into()]);
        let (text, finish) = feed(&mut d, &ids);
        assert_eq!(finish, Some(FinishReason::Stop));
        assert_eq!(text, "今日は晴れ");
        assert_eq!(finish.unwrap().openai(), "stop");
    }

    #[test]
    fn eos_ends_without_text_and_cancel_flushes_what_was_held_back() {
        let Some(tokenizer) = tokenizer() else { return };
        let mut d = decoding(&tokenizer, ROOMY, &[]);
        let step = d.accept(&one_hot(2)).unwrap();
        assert_eq!(
            (step.text.as_str(), step.finish),
            ("", Some(FinishReason::Eos))
        );
        // Text that may start a stop string is held back until cancelled.
        let ids = tokenizer.encode("はい。終", false).unwrap();
        let mut d = decoding(&tokenizer, ROOMY, &["終わり".into()]);
        let (text, finish) = feed(&mut d, &ids);
        assert_eq!((text.as_str(), finish), ("はい。", None));
        assert_eq!(d.cancel().unwrap(), ("終".into(), FinishReason::Cancelled));
        assert_eq!(d.finish_reason(), Some(FinishReason::Cancelled));
        assert_eq!(FinishReason::Cancelled.openai(), "stop");
        assert_eq!(FinishReason::Context.openai(), "length");
    }
}
