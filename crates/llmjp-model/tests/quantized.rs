//! Weights quantized on load (Q8_0, Q4_0) against the same model in bf16, on the tiny
//! fixtures, over teacher-forced positions: relative RMS error of the logits and top-1
//! agreement where bf16's choice is clear, on the CPU kernels (integer dot products) and on
//! the reference (burn's generic dequantizing path), each bounded relative to the noise
//! floor of bf16 itself (see docs/performance.md for the figures).

use std::sync::Arc;

use llmjp_model::cpu::CpuKernels;
use llmjp_model::ops::{DecoderOps, Reference};
use llmjp_model::{backend::Cpu, read_f32, CausalLm, ComputeDtype, ModelConfig, WeightDtype};
use llmjp_testdata::{LogitAgreement, MODEL_FIXTURES};
use llmjp_weights::quant::BlockFormat;
use llmjp_weights::Checkpoint;

const POSITIONS: usize = 200;

fn load(name: &str, dtype: WeightDtype, ops: Arc<dyn DecoderOps<Cpu>>) -> CausalLm<Cpu> {
    let dir = llmjp_testdata::fixture_dir(name);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    CausalLm::load_with_ops(
        config,
        &checkpoint,
        dtype,
        &Default::default(),
        ops,
        &mut |_, _| {},
    )
    .unwrap()
}

/// Logits of every position of a fixed pseudo-random sequence, in one prefill.
fn logits(model: &CausalLm<Cpu>) -> Vec<f32> {
    let vocab = model.config().vocab_size as u64;
    let ids: Vec<u32> = (0..POSITIONS as u64)
        .map(|i| (i * 7919 + 13).wrapping_mul(2654435761) % vocab)
        .map(|id| id as u32)
        .collect();
    let mut cache = model.new_cache(POSITIONS);
    read_f32(model.forward(&ids, &mut cache).unwrap()).unwrap()
}

#[test]
fn quantized_logits_stay_close_to_bf16() {
    for name in MODEL_FIXTURES {
        let bf16 = load(
            name,
            ComputeDtype::BF16.into(),
            Arc::new(CpuKernels::new().unwrap()),
        );
        let reference = logits(&bf16);
        let vocab = bf16.config().vocab_size;
        let floor = logits(&load(name, ComputeDtype::BF16.into(), Arc::new(Reference)));
        let floor = LogitAgreement::new(&reference, &floor, vocab);
        eprintln!("{name} bf16 activations (noise floor): {floor:?}");
        let ops: [Arc<dyn DecoderOps<Cpu>>; 2] =
            [Arc::new(CpuKernels::new().unwrap()), Arc::new(Reference)];
        for ops in ops {
            // Bounds relative to the noise floor: the same bf16 weights with bf16 activations
            // (transformers' numerics) differ from ours by `floor`; random-weight models
            // amplify every perturbation through their layers (docs/performance.md).
            for (format, max_over_floor, top1_slack) in [
                (BlockFormat::Q8_0, 5.0, 0.02),
                (BlockFormat::Q4_0, 30.0, 0.45),
            ] {
                let dtype = WeightDtype {
                    compute: ComputeDtype::BF16,
                    quantize: Some(format),
                };
                let label = format!("{name} {format} on the {}", ops.name());
                let model = load(name, dtype, ops.clone());
                assert_eq!(model.weight_dtype(), dtype);
                let agreement = LogitAgreement::new(&reference, &logits(&model), vocab);
                eprintln!("{label}: {agreement:?}");
                assert!(
                    agreement.rel_rms <= max_over_floor * floor.rel_rms,
                    "{label}: {agreement:?}"
                );
                assert!(
                    agreement.clear_top1() >= floor.clear_top1() - top1_slack,
                    "{label}: {agreement:?}"
                );
                assert!(agreement.clear >= POSITIONS / 2, "{label}: {agreement:?}");
            }
        }
    }
}
