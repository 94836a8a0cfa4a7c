//! `llmjp quantize`: writes a model folder with its linear weights in Q8_0 or Q4_0, or in
//! llama.cpp's K-quant mixes, which later loads in place (memory-mapped, no
//! re-quantization).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use llmjp::crates::model::quantize::{quantize_checkpoint, QuantizeFormat};
use llmjp::crates::weights::resolve_model;
use llmjp::HubOptions;

use crate::model_args::ProgressBar;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder (bf16, f16 or f32 safetensors), or Hub id org/name[@revision].
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: String,
    /// q8_0 (8-bit, within noise of bf16), q4_0 (4-bit; embeddings and head stay q8_0), or
    /// llama.cpp's K-quant mixes q4_k_m, q5_k_m, q6_k (head in q6_k; some value and down
    /// projections in q6_k for the _m mixes).
    #[arg(long, default_value = "q8_0")]
    format: QuantizeFormat,
    /// The folder to write (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args, out: &mut impl Write) -> Result {
    let format = args.format;
    let mut hub = HubOptions::from_env();
    hub.progress = std::io::stderr().is_terminal();
    let src = resolve_model(&args.model, &hub)?;
    let start = Instant::now();
    let mut progress = ProgressBar::new("quantizing");
    let report = quantize_checkpoint(&src, format, &args.out, &mut |done, total| {
        progress.update(done, total)
    });
    progress.finish();
    let report = report?;
    writeln!(
        out,
        "wrote {} in {format}: {} tensors quantized, {} copied, {:.2} GB in {} file(s), {:.1} s",
        args.out.display(),
        report.quantized,
        report.copied,
        report.bytes as f64 / 1e9,
        report.shards,
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}
