//! The CPU's bf16 path (bf16 weights, the CPU kernels, f32 activations) against the f32
//! reference of transformers on the tiny fixtures, on every instruction set this CPU runs
//! (the tests say which they skip).
//!
//! Tolerance held:
//! - checkpoints stored in bf16 (as the llm-jp models are): the weights are exact. Logits
//!   stay within 0.02 of transformers' f32 logits. Instruction sets that keep f32
//!   activations (up to AVX-512 VNNI; AMX below 32 rows) leave the 32-token greedy
//!   continuation unchanged. Those that round activations to bf16 as transformers' bf16
//!   models do (AVX-512 BF16, AMX prefills) are fed the reference's continuation, and at
//!   every step its token must be the best or within 0.02 of the best: a random-weight
//!   model has near-ties that 8 significant bits of activation may swap.
//! - checkpoints stored in f16 or f32: bf16 also rounds the weights, which changes the model
//!   itself. Logits stay within 0.1 and the first greedy token is unchanged; later tokens may
//!   differ where two candidates (or, in a top-1 MoE, two experts) are closer than bf16 can
//!   separate.

use std::sync::Arc;

use burn::tensor::Tensor;
use llmjp_model::backend::Cpu;
use llmjp_model::cpu::CpuKernels;
use llmjp_model::cpu::Isa;
use llmjp_model::{CausalLm, ComputeDtype, ModelConfig};
use llmjp_testdata::{argmax, max_abs_diff, model_reference};
use llmjp_weights::Checkpoint;

/// The instruction sets this CPU runs; says which are skipped.
fn isas() -> Vec<Isa> {
    let (run, skip): (Vec<Isa>, Vec<Isa>) = Isa::ALL.into_iter().partition(|i| i.is_supported());
    if !skip.is_empty() {
        eprintln!("skipping {skip:?}: this CPU cannot run them");
    }
    run
}

/// Fixture `name` in bf16 on the CPU kernels of `isa`.
fn load(name: &str, isa: Isa) -> CausalLm<Cpu> {
    let dir = llmjp_testdata::fixture_dir(name);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let ops = Arc::new(CpuKernels::with_isa(isa));
    CausalLm::load_with_ops(
        config,
        &checkpoint,
        ComputeDtype::BF16,
        &Default::default(),
        ops,
        &mut |_, _| {},
    )
    .unwrap()
}

fn values(t: Tensor<Cpu, 1>) -> Vec<f32> {
    llmjp_model::read_f32(t).unwrap()
}

#[test]
fn bf16_weights_stay_close_to_the_f32_reference() {
    let cases = [
        ("llama-mha-bf16", true),
        ("mixtral-top2-bf16", true),
        ("llama-gqa-f32-sharded", false),
        ("mixtral-top1-gqa-f16-t5", false),
    ];
    for (isa, (name, stored_bf16)) in isas().into_iter().flat_map(|isa| cases.map(|c| (isa, c))) {
        let model = load(name, isa);
        let reference = model_reference(name);
        for p in &reference.prompts {
            let mut cache = model.new_cache(p.ids.len() + p.greedy.len());
            let mut logits = values(model.forward_last(&p.ids, &mut cache).unwrap());
            let err = max_abs_diff(&logits, &p.last_logits);
            eprintln!(
                "{name} ({isa}), {} tokens: max abs logit error {err:.4}",
                p.ids.len()
            );
            let tolerance = if stored_bf16 { 0.02 } else { 0.1 };
            assert!(err <= tolerance, "{name}, {} tokens: {err}", p.ids.len());
            let rounds_activations = isa >= Isa::Avx512Bf16;
            let mut agree = 0;
            for &expected in &p.greedy {
                let next = argmax(&logits);
                if next != expected {
                    let best = logits[next as usize];
                    let near_tie = best - logits[expected as usize] <= 0.02;
                    if !(rounds_activations && stored_bf16 && near_tie) {
                        eprintln!(
                            "  step {agree}: best {best} vs {}",
                            logits[expected as usize]
                        );
                        break;
                    }
                    eprintln!(
                        "  near-tie at step {agree}: {best} vs {}",
                        logits[expected as usize]
                    );
                }
                agree += 1;
                logits = values(model.forward_last(&[expected], &mut cache).unwrap());
            }
            eprintln!("  greedy agreement {agree}");
            let needed = if stored_bf16 { p.greedy.len() } else { 1 };
            assert!(
                agree >= needed,
                "{name}, {} tokens: greedy agrees for {agree} tokens",
                p.ids.len()
            );
        }
    }
}

#[test]
fn bf16_prefill_agrees_with_single_steps() {
    for isa in isas() {
        prefill_agrees_with_single_steps(isa);
    }
    // The default ops of a bf16 model on the CPU are the CPU kernels.
    let dir = llmjp_testdata::fixture_dir("llama-mha-bf16");
    let model = CausalLm::<Cpu>::from_dir(&dir, ComputeDtype::BF16, &Default::default()).unwrap();
    assert_eq!(model.ops().name(), "cpu kernels");
}

fn prefill_agrees_with_single_steps(isa: Isa) {
    let model = load("llama-mha-bf16", isa);
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 % 500) as u32 + 3).collect();
    let mut cache = model.new_cache(ids.len());
    let prefill = values(model.forward_last(&ids, &mut cache).unwrap());
    let mut cache = model.new_cache(ids.len());
    let mut stepped = Vec::new();
    for &id in &ids {
        stepped = values(model.forward_last(&[id], &mut cache).unwrap());
    }
    // A 40-token prefill may use AMX (bf16 activations); its steps use f32 activations.
    let err = max_abs_diff(&prefill, &stepped);
    assert!(err <= 0.05, "{isa}: {err}");
    // Chunks after a cached prefix (queries offset against the cache) give exactly the
    // steps' numbers: below 32 tokens no ISA changes how activations are rounded, and every
    // query's arithmetic is the same whatever chunk it is in.
    let mut cache = model.new_cache(ids.len());
    let mut chunked = Vec::new();
    for chunk in ids.chunks(7) {
        chunked = values(model.forward_last(chunk, &mut cache).unwrap());
    }
    assert_eq!(chunked, stepped, "{isa}");
}
