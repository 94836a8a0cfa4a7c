//! Options shared by the commands that load a model, and loading with a progress bar.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use llmjp::{
    ComputeDtype, Device, HubOptions, Llm, LoadOptions, ModelSource, SamplingParams, WeightDtype,
};

use crate::Result;

/// The Hub id of the default model.
pub const DEFAULT_MODEL: &str = "llm-jp/llm-jp-3.1-1.8b-instruct4";

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model folder, or Hub id org/name[@revision].
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Take the tokenizer files from this folder instead of the model's.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// Weights dtype: bf16, f16, f32, or q8_0 / q4_0 to quantize a float checkpoint on load
    /// [default: bf16]. On the CPU, bf16 keeps the weights in bf16 and computes in f32
    /// (AVX-512 / AMX / AVX2 kernels); a quantized checkpoint runs in its own format.
    #[arg(long)]
    dtype: Option<WeightDtype>,
    /// cpu, cuda or cuda:N [default: CUDA when built with it and a GPU is present].
    #[arg(long)]
    device: Option<Device>,
    /// On a GPU: the folder compiled kernels and autotune results are kept in [default:
    /// $LLMJP_KERNEL_CACHE, else ~/.cache/llmjp/cubecl; LLMJP_KERNEL_CACHE=off turns it off].
    #[arg(long, value_name = "DIR")]
    kernel_cache: Option<PathBuf>,
}

impl ModelArgs {
    /// The folder or Hub id as given.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// Loads the model, telling on stderr which device and dtype it chose.
    pub fn load(&self) -> Result<Llm> {
        let device = self.device.unwrap_or_else(Device::auto);
        let dtype = self.dtype.unwrap_or(ComputeDtype::BF16.into());
        let source: ModelSource = self.model.parse()?;
        // Status lines never fail the command (stderr may be closed or full).
        let _ = writeln!(
            std::io::stderr(),
            "llmjp: {} on {device} in {dtype}",
            self.model
        );
        let mut hub = HubOptions::from_env();
        hub.revision = self.revision.clone();
        hub.progress = std::io::stderr().is_terminal();
        let options = LoadOptions {
            dtype,
            hub,
            tokenizer_dir: self.tokenizer.clone(),
            kernel_cache_dir: self.kernel_cache.clone(),
        };
        let label = if dtype.quantize.is_some() {
            "loading and quantizing weights"
        } else {
            "loading weights"
        };
        let mut progress = ProgressBar::new(label);
        let llm = Llm::load(&source, device, &options, &mut |done, total| {
            progress.update(done, total)
        });
        progress.finish();
        let llm = llm?;
        report_kernel_cache(&llm);
        Ok(llm)
    }
}

/// On a GPU, says where kernels are cached, and that a first run compiles them as they are
/// first used (seconds to a minute before the first token).
fn report_kernel_cache(llm: &Llm) {
    #[cfg(feature = "cuda")]
    if matches!(llm.device(), Device::Cuda(_)) {
        use llmjp::crates::model::cube::kernel_cache::{configured, KernelCache};
        match configured() {
            Some(KernelCache::Dir { path, cold: true }) => drop(writeln!(
                std::io::stderr(),
                "llmjp: first run on this machine: GPU kernels compile as they are first used \
                 (cached in {}; `llmjp warmup` compiles them ahead)",
                path.display()
            )),
            Some(KernelCache::Unavailable(why)) => drop(writeln!(
                std::io::stderr(),
                "llmjp: kernel cache not in effect ({why}): kernels compile in every run"
            )),
            _ => {}
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = llm;
}

#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 100)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Turn top-k off.
    #[arg(long)]
    no_top_k: bool,
    #[arg(long)]
    min_p: Option<f32>,
    #[arg(long, default_value_t = 1.05, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Random seed [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains STR (repeatable); the text ends before it.
    #[arg(long, value_name = "STR")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        });
        SamplingParams {
            temperature: self.temperature,
            top_k: (!self.no_top_k).then_some(self.top_k),
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed,
        }
    }
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
pub struct ProgressBar {
    label: &'static str,
    active: bool,
    drawn: bool,
}

impl ProgressBar {
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            active: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if !self.active || total == 0 {
            return;
        }
        const WIDTH: usize = 30;
        let filled = WIDTH * done / total;
        let bar = format!("{}{}", "#".repeat(filled), " ".repeat(WIDTH - filled));
        let _ = write!(std::io::stderr(), "\r{} [{bar}] {done}/{total}", self.label);
        let _ = std::io::stderr().flush();
        self.drawn = true;
    }

    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}
