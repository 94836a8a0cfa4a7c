//! Logits and greedy continuations equal transformers' on the tiny fixtures
//! (`xtask/golden/model_golden.py`), on the CPU in f32.

use burn::tensor::Tensor;
use llmjp_model::backend::Cpu;
use llmjp_model::{CausalLm, ComputeDtype};
use llmjp_testdata::{
    argmax, max_abs_diff, model_reference, ModelReference, MODEL_FIXTURES as FIXTURES,
};

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> (CausalLm<Cpu>, ModelReference) {
    let dir = llmjp_testdata::fixture_dir(name);
    let model = CausalLm::<Cpu>::from_dir(&dir, ComputeDtype::F32, &Default::default()).unwrap();
    (model, model_reference(name))
}

fn to_vec<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

/// Prefill, then one KV-cache step per generated token.
fn greedy(model: &CausalLm<Cpu>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut cache = model.new_cache(prompt.len() + steps);
    let mut logits = to_vec(model.forward_last(prompt, &mut cache).unwrap());
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = argmax(&logits);
        out.push(next);
        logits = to_vec(model.forward_last(&[next], &mut cache).unwrap());
    }
    out
}

#[test]
fn last_logits_match_transformers() {
    for name in FIXTURES {
        let (model, reference) = load(name);
        for prompt in &reference.prompts {
            let mut cache = model.new_cache(prompt.ids.len());
            let logits = to_vec(model.forward_last(&prompt.ids, &mut cache).unwrap());
            let err = max_abs_diff(&logits, &prompt.last_logits);
            eprintln!(
                "{name}, {} tokens: max abs error {err:.2e}",
                prompt.ids.len()
            );
            assert!(
                err <= TOLERANCE,
                "{name}, {} tokens: max abs error {err}",
                prompt.ids.len()
            );
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let (model, reference) = load(name);
        for prompt in &reference.prompts {
            let ours = greedy(&model, &prompt.ids, prompt.greedy.len());
            assert_eq!(
                ours,
                prompt.greedy,
                "{name}, prompt of {} tokens",
                prompt.ids.len()
            );
        }
    }
}

#[test]
fn prefill_equals_single_token_steps() {
    for name in FIXTURES {
        let (model, reference) = load(name);
        let ids = &reference.prompts.last().unwrap().ids;
        let mut cache = model.new_cache(ids.len());
        let all = to_vec(model.forward(ids, &mut cache).unwrap());
        let vocab = model.config().vocab_size;
        let mut cache = model.new_cache(ids.len());
        for (pos, &id) in ids.iter().enumerate() {
            let step = to_vec(model.forward_last(&[id], &mut cache).unwrap());
            let err = max_abs_diff(&step, &all[pos * vocab..(pos + 1) * vocab]);
            assert!(err <= 1e-5, "{name}, position {pos}: {err}");
        }
        // A prefill split in two chunks agrees as well.
        let mut cache = model.new_cache(ids.len());
        let split = ids.len() / 3;
        model.forward_last(&ids[..split], &mut cache).unwrap();
        let chunked = to_vec(model.forward_last(&ids[split..], &mut cache).unwrap());
        let err = max_abs_diff(&chunked, &all[(ids.len() - 1) * vocab..]);
        assert!(err <= 1e-5, "{name}, chunked prefill: {err}");
    }
}
