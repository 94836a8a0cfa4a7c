//! `cargo xtask accuracy [--model DIR] [--positions N]`: each quantized format against bf16
//! on the same checkpoint (default: the random-weight 1.8b-shaped one of `cargo xtask
//! bench`), over N teacher-forced positions of one pseudo-random sequence: max abs logit
//! error, relative RMS error, top-1 agreement where bf16's top-2 margin is clear
//! (`llmjp_testdata::CLEAR_MARGIN`), on the CPU kernels (8-bit activations) and on the
//! reference ops (f32 activations: the format's error alone, which
//! `xtask/accuracy/format_bound.py` computes with transformers for comparison).

use std::path::PathBuf;

use std::sync::Arc;

use llmjp_model::backend::Cpu;
use llmjp_model::cpu::CpuKernels;
use llmjp_model::ops::{DecoderOps, Reference};
use llmjp_model::{read_f32, CausalLm, ComputeDtype, ModelConfig, WeightDtype};
use llmjp_testdata::{LogitAgreement, CLEAR_MARGIN};
use llmjp_weights::quant::BlockFormat;
use llmjp_weights::Checkpoint;

use crate::bench_model::{ensure_checkpoint, MODEL_DIR};
use crate::shell::root;

pub fn run(args: &[String]) -> Result<(), String> {
    let (mut model, mut positions) = (None, 256usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--positions" => positions = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let dir = match model {
        Some(dir) => dir,
        None => {
            ensure_checkpoint()?;
            root().join(MODEL_DIR)
        }
    };
    let logits = |dtype: WeightDtype,
                  ops: Arc<dyn DecoderOps<Cpu>>|
     -> Result<(Vec<f32>, usize), String> {
        let config = ModelConfig::from_file(&dir.join("config.json")).map_err(|e| e.to_string())?;
        let checkpoint = Checkpoint::open(&dir).map_err(|e| e.to_string())?;
        let model = CausalLm::<Cpu>::load_with_ops(
            config,
            &checkpoint,
            dtype,
            &Default::default(),
            ops,
            &mut |_, _| {},
        )
        .map_err(|e| e.to_string())?;
        let vocab = model.config().vocab_size;
        let ids: Vec<u32> = (0..positions as u64)
            .map(|i| ((i * 7919 + 13).wrapping_mul(2654435761) % vocab as u64) as u32)
            .collect();
        let mut cache = model.new_cache(positions);
        let logits = model.forward(&ids, &mut cache).map_err(|e| e.to_string())?;
        Ok((read_f32(logits).map_err(|e| e.to_string())?, vocab))
    };
    let kernels: Arc<dyn DecoderOps<Cpu>> = Arc::new(CpuKernels::new().map_err(|e| e.to_string())?);
    let (reference, vocab) = logits(ComputeDtype::BF16.into(), kernels.clone())?;
    println!(
        "{} positions of {}; clear: bf16's top-2 margin >= {CLEAR_MARGIN} std of the position's logits",
        positions,
        dir.display()
    );
    println!("| format | max abs error | relative RMS error | clear positions | top-1 agreement at clear |");
    println!("|---|---|---|---|---|");
    let quantized = |format, compute| WeightDtype {
        compute,
        quantize: Some(format),
    };
    let rows: [(&str, WeightDtype, Arc<dyn DecoderOps<Cpu>>); 5] = [
        (
            "bf16, bf16 activations (transformers' numerics: the noise floor)",
            ComputeDtype::BF16.into(),
            Arc::new(Reference),
        ),
        (
            "q8_0 (CPU kernels: 8-bit activations, as llama.cpp)",
            quantized(BlockFormat::Q8_0, ComputeDtype::BF16),
            kernels.clone(),
        ),
        (
            "q8_0, f32 activations (reference ops; what the CUDA kernels compute)",
            quantized(BlockFormat::Q8_0, ComputeDtype::F32),
            Arc::new(Reference),
        ),
        (
            "q4_0 (CPU kernels)",
            quantized(BlockFormat::Q4_0, ComputeDtype::BF16),
            kernels.clone(),
        ),
        (
            "q4_0, f32 activations (reference ops)",
            quantized(BlockFormat::Q4_0, ComputeDtype::F32),
            Arc::new(Reference),
        ),
    ];
    for (name, dtype, ops) in rows {
        let (ours, _) = logits(dtype, ops)?;
        let a = LogitAgreement::new(&reference, &ours, vocab);
        println!(
            "| {name} | {:.4} | {:.2} % | {} / {} | {:.1} % |",
            a.max_abs,
            a.rel_rms * 100.0,
            a.clear,
            a.positions,
            a.clear_top1() * 100.0
        );
    }
    Ok(())
}
