//! [`Pipeline`]: tokenizer, chat template and model together, and the generation loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use llmjp_chat::{ChatTemplate, Message};
use llmjp_model::backend::DecoderBackend;
use llmjp_model::{read_f32, CausalLm, ComputeDtype, WeightDtype};
use llmjp_sampler::processors::LogitsProcessor;
use llmjp_sampler::{Sampler, SamplingParams};
use llmjp_tokenizer::Tokenizer;
use llmjp_weights::{Checkpoint, GenerationConfig, HubOptions, ModelConfig, ModelSource};

use crate::decoding::{Decoding, FinishReason, TokenBudget};
use crate::{LlmError, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The dtype weights and activations are computed in; default bf16, the checkpoints'
    /// dtype (on the CPU, bf16 keeps the weights in bf16 and computes in f32). `q8_0` /
    /// `q4_0` quantize the linear weights on load (`"q8_0".parse()`); a quantized
    /// checkpoint (`llmjp quantize`) runs in its own format whatever is asked.
    pub dtype: WeightDtype,
    /// How to reach the Hub when the model is given as `org/name[@revision]`.
    pub hub: HubOptions,
    /// A folder to take the tokenizer files from instead of the model folder.
    pub tokenizer_dir: Option<PathBuf>,
    /// On a GPU: the folder compiled kernels and autotune results persist in (default
    /// `$LLMJP_KERNEL_CACHE`, else `cubecl/` in llmjp's cache folder; see
    /// `llmjp_model::cube::kernel_cache`). The first model loaded on a GPU in a process
    /// decides it.
    pub kernel_cache_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: ComputeDtype::BF16.into(),
            hub: HubOptions::default(),
            tokenizer_dir: None,
            kernel_cache_dir: None,
        }
    }
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate (the EOS token counts, as in transformers).
    pub max_new_tokens: usize,
    /// Token selection; the default is the model card's sampling settings.
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the text ends before it.
    pub stop: Vec<String>,
    /// Keep going past EOS tokens (for benchmarks that need a fixed length).
    pub ignore_eos: bool,
    /// The caller's logits processors, run where transformers runs a `logits_processor`
    /// list: after the repetition penalty, before the sampling warpers.
    pub processors: Vec<Arc<dyn LogitsProcessor>>,
}

/// Equal when every setting is, and the processors are the same values.
impl PartialEq for GenerateOptions {
    fn eq(&self, other: &Self) -> bool {
        self.max_new_tokens == other.max_new_tokens
            && self.sampling == other.sampling
            && self.stop == other.stop
            && self.ignore_eos == other.ignore_eos
            && self.processors.len() == other.processors.len()
            && self
                .processors
                .iter()
                .zip(&other.processors)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            sampling: SamplingParams::model_card(),
            stop: Vec::new(),
            ignore_eos: false,
            processors: Vec::new(),
        }
    }
}

/// Wall-clock times of one generation (and of loading the model it ran on).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Seconds spent loading the model.
    pub load_s: f64,
    /// Seconds of the prefill (the prompt in one pass).
    pub prefill_s: f64,
    /// Tokens prefilled.
    pub prefill_tokens: usize,
    /// Time of the single-token forward passes after the prefill.
    pub decode_s: f64,
    /// Decode steps timed (one per generated token after the first).
    pub decode_tokens: usize,
}

impl Timings {
    /// Prefill speed, tokens per second.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_s)
    }

    /// Decode speed, tokens per second.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_s)
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The prompt, as ids.
    pub prompt_ids: Vec<u32>,
    /// Every generated id, the EOS included.
    pub generated_ids: Vec<u32>,
    /// The generated text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Load, prefill and decode times.
    pub timings: Timings,
}

/// A loaded model with its tokenizer and chat template, on backend `B`.
#[derive(Debug)]
pub struct Pipeline<B: Backend> {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    model: CausalLm<B>,
    eos_ids: Vec<u32>,
    load_s: f64,
}

impl<B: DecoderBackend> Pipeline<B> {
    /// Loads a model folder, Hub repository or llama.cpp GGUF file (imported once into the
    /// cache, see [`ModelSource::resolve`]): tokenizer, chat template, config and weights.
    /// `on_progress(done, total)` is called as weights are loaded.
    pub fn load(
        source: &ModelSource,
        options: &LoadOptions,
        device: &B::Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let start = Instant::now();
        let tokenizer_dir = options.tokenizer_dir.as_deref();
        let dir = source.resolve(&options.hub, tokenizer_dir, on_progress)?;
        let tokenizer_dir = tokenizer_dir.unwrap_or(&dir);
        let tokenizer = Tokenizer::from_dir(tokenizer_dir)?;
        let template = ChatTemplate::from_tokenizer(&tokenizer)?;
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let eos_ids = eos_ids(&dir, &config, &tokenizer)?;
        let checkpoint = Checkpoint::open(&dir)?;
        let model =
            CausalLm::load_with_progress(config, &checkpoint, options.dtype, device, on_progress)?;
        let mut pipeline = Self::from_parts(tokenizer, template, model, eos_ids);
        pipeline.load_s = start.elapsed().as_secs_f64();
        Ok(pipeline)
    }
}

impl<B: Backend> Pipeline<B> {
    /// Assembles a pipeline from loaded parts; generation stops at `eos_ids`.
    pub fn from_parts(
        tokenizer: Tokenizer,
        template: ChatTemplate,
        model: CausalLm<B>,
        eos_ids: Vec<u32>,
    ) -> Self {
        Self {
            tokenizer,
            template,
            model,
            eos_ids,
            load_s: 0.0,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The model.
    pub fn model(&self) -> &CausalLm<B> {
        &self.model
    }

    /// The ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Seconds it took to load.
    pub fn load_seconds(&self) -> f64 {
        self.load_s
    }

    /// The ids of a chat, rendered with the template and encoded without a second BOS.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let prompt = self.template.render(messages, true)?;
        self.check_prompt_text(&prompt)?;
        Ok(self.tokenizer.encode(&prompt, false)?)
    }

    /// The ids of raw text, with the tokenizer's special tokens (the BOS), as
    /// `tokenizer(text)` in transformers.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        self.check_prompt_text(text)?;
        Ok(self.tokenizer.encode(text, true)?)
    }

    fn check_prompt_text(&self, text: &str) -> Result<()> {
        check_prompt_text(
            text,
            &self.tokenizer,
            self.model.config().max_position_embeddings,
        )
    }

    /// Answers a chat: renders it, generates, and streams the answer's text to `on_text`
    /// (return `false` from it to stop).
    pub fn chat(
        &self,
        messages: &[Message],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.encode_chat(messages)?;
        self.generate(&ids, options, on_text)
    }

    /// The token step of one sequence after `prompt_ids` with `options` (sampler, stop
    /// strings, token budget): what [`generate`](Self::generate) runs, and what a server
    /// runs for each of its sequences. Refuses an empty prompt, one that fills the context,
    /// `max_new_tokens` of 0 and invalid sampling settings.
    pub fn decoding(&self, prompt_ids: &[u32], options: &GenerateOptions) -> Result<Decoding<'_>> {
        let sampler = Sampler::with_processors(options.sampling, options.processors.clone())?;
        if options.max_new_tokens == 0 {
            return Err(LlmError::InvalidOption(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if prompt_ids.is_empty() {
            return Err(LlmError::EmptyPrompt);
        }
        let context = self.model.config().max_position_embeddings;
        if prompt_ids.len() >= context {
            return Err(LlmError::PromptTooLong {
                tokens: prompt_ids.len(),
                limit: context - 1,
            });
        }
        let budget = TokenBudget {
            max_new_tokens: options.max_new_tokens,
            context,
        };
        Ok(Decoding::new(
            &self.tokenizer,
            &self.eos_ids,
            prompt_ids,
            sampler,
            budget,
            &options.stop,
            options.ignore_eos,
        ))
    }

    /// Generates after `prompt_ids`, streaming text to `on_text` (return `false` to stop).
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut decoding = self.decoding(prompt_ids, options)?;
        // The cache grows with what is generated, up to this many positions.
        let mut cache = self
            .model
            .new_cache(prompt_ids.len().saturating_add(options.max_new_tokens));
        let mut timings = Timings {
            load_s: self.load_s,
            prefill_tokens: prompt_ids.len(),
            ..Timings::default()
        };
        let mut text = String::new();

        let start = Instant::now();
        let mut logits = read_f32(self.model.forward_last(prompt_ids, &mut cache)?)?;
        timings.prefill_s = start.elapsed().as_secs_f64();

        let finish_reason = loop {
            let step = decoding.accept(&logits)?;
            text.push_str(&step.text);
            let go_on = step.text.is_empty() || on_text(&step.text);
            if let Some(finish) = step.finish {
                break finish;
            }
            if !go_on {
                let (tail, finish) = decoding.cancel()?;
                text.push_str(&tail);
                if !tail.is_empty() {
                    on_text(&tail);
                }
                break finish;
            }
            let started = Instant::now();
            logits = read_f32(self.model.forward_last(&[step.token], &mut cache)?)?;
            timings.decode_s += started.elapsed().as_secs_f64();
            timings.decode_tokens += 1;
        };
        Ok(Generation {
            prompt_ids: prompt_ids.to_vec(),
            generated_ids: decoding.generated().to_vec(),
            text,
            finish_reason,
            timings,
        })
    }
}

/// Refuses text far longer than a context of `context` tokens can hold, before it is
/// encoded (encoding costs time and about 70 bytes of memory per byte of text): more than
/// four times the context in the vocabulary's longest tokens is
/// [`LlmError::PromptTextTooLong`].
pub fn check_prompt_text(text: &str, tokenizer: &Tokenizer, context: usize) -> Result<()> {
    let limit = context
        .saturating_mul(tokenizer.max_token_bytes().max(16))
        .saturating_mul(4);
    if text.len() > limit {
        return Err(LlmError::PromptTextTooLong {
            bytes: text.len(),
            limit,
            context,
        });
    }
    Ok(())
}

/// The ids that end generation: `generation_config.json`'s, else `config.json`'s, else the
/// tokenizer's EOS.
fn eos_ids(dir: &Path, config: &ModelConfig, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let generation = GenerationConfig::from_dir_or_default(dir)?;
    // An id past the vocabulary is never sampled: generation would never stop on it.
    if let Some(id) = generation
        .eos_token_ids
        .iter()
        .find(|&&id| id as usize >= config.vocab_size)
    {
        return Err(llmjp_weights::WeightsError::InvalidConfig {
            path: dir.join("generation_config.json"),
            message: format!(
                "eos_token_id {id} is outside the vocabulary of {} tokens",
                config.vocab_size
            ),
        }
        .into());
    }
    let ids = if !generation.eos_token_ids.is_empty() {
        generation.eos_token_ids
    } else if !config.eos_token_ids.is_empty() {
        config.eos_token_ids.clone()
    } else {
        tokenizer.eos_id().into_iter().collect()
    };
    Ok(ids)
}
