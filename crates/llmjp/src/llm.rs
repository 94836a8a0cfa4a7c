//! [`Llm`]: a [`Pipeline`] on the backend chosen at run time.

use llmjp_chat::{ChatTemplate, Message};
use llmjp_model::backend::{Backend, Cpu};
use llmjp_tokenizer::Tokenizer;
use llmjp_weights::{ModelConfig, ModelSource};

use crate::{Device, GenerateOptions, Generation, LlmError, LoadOptions, Pipeline, Result};

/// A loaded model on the CPU or, with the `cuda` feature, a GPU.
#[derive(Debug)]
pub enum Llm {
    /// On the CPU.
    Cpu(Pipeline<Cpu>),
    /// On a GPU, through burn-cuda.
    #[cfg(feature = "cuda")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
    Cuda(Pipeline<llmjp_model::backend::Cuda>),
}

macro_rules! dispatch {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Llm::Cpu($p) => $body,
            #[cfg(feature = "cuda")]
            Llm::Cuda($p) => $body,
        }
    };
}

/// Work generic over the backend, run on whichever [`Pipeline`] an [`Llm`] holds
/// ([`Llm::run`]), so a caller writes no backend dispatch of its own.
///
/// ```
/// use llmjp::backend::Backend;
/// use llmjp::{Llm, Pipeline, PipelineTask};
///
/// struct EosIds;
/// impl PipelineTask for EosIds {
///     type Output = Vec<u32>;
///     fn run<B: Backend>(self, pipeline: &Pipeline<B>) -> Vec<u32> {
///         pipeline.eos_ids().to_vec()
///     }
/// }
/// fn eos_ids(llm: &Llm) -> Vec<u32> {
///     llm.run(EosIds)
/// }
/// ```
pub trait PipelineTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `pipeline`.
    fn run<B: Backend>(self, pipeline: &Pipeline<B>) -> Self::Output;
}

impl Llm {
    /// Runs `task` on the pipeline, whatever its backend.
    pub fn run<T: PipelineTask>(&self, task: T) -> T::Output {
        dispatch!(self, p => task.run(p))
    }

    /// Loads the model `source` names (a folder, a Hub repository or a GGUF file) on
    /// `device`.
    pub fn load(
        source: &ModelSource,
        device: Device,
        options: &LoadOptions,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::Cpu(Pipeline::load(
                source,
                options,
                &Default::default(),
                on_progress,
            )?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(index) => {
                if !llmjp_model::backend::cuda_available() {
                    return Err(LlmError::Device(
                        "cuda was asked for but no CUDA driver (libcuda.so.1) could be loaded"
                            .into(),
                    ));
                }
                llmjp_model::cube::kernel_cache::configure(options.kernel_cache_dir.as_deref());
                let device = burn_cuda_device(index);
                Ok(Self::Cuda(Pipeline::load(
                    source,
                    options,
                    &device,
                    on_progress,
                )?))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(LlmError::Device(
                "this build has no CUDA support: rebuild with --features cuda".into(),
            )),
        }
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        match self {
            Self::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Self::Cuda(p) => Device::Cuda(p.model().device().index),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        dispatch!(self, p => p.tokenizer())
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        dispatch!(self, p => p.template())
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        dispatch!(self, p => p.model().config())
    }

    /// Seconds it took to load.
    pub fn load_seconds(&self) -> f64 {
        dispatch!(self, p => p.load_seconds())
    }

    /// The ids of a chat (see [`Pipeline::encode_chat`]).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        dispatch!(self, p => p.encode_chat(messages))
    }

    /// The ids of raw text (see [`Pipeline::encode_raw`]).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        dispatch!(self, p => p.encode_raw(text))
    }

    /// See [`Pipeline::chat`].
    pub fn chat(
        &self,
        messages: &[Message],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        dispatch!(self, p => p.chat(messages, options, on_text))
    }

    /// See [`Pipeline::generate`].
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        dispatch!(self, p => p.generate(prompt_ids, options, on_text))
    }
}

#[cfg(feature = "cuda")]
fn burn_cuda_device(
    index: usize,
) -> <llmjp_model::backend::Cuda as burn::tensor::backend::BackendTypes>::Device {
    burn_cuda::CudaDevice::new(index)
}
