//! The parity tests of the tiny fixtures on a GPU (`--features cuda`), in f32 and bf16.
//! Without a GPU they skip with a message.
#![cfg(feature = "cuda")]

use burn::tensor::Tensor;
use llmjp_model::backend::{cuda_available, Cuda};
use llmjp_model::{CausalLm, ComputeDtype};
use llmjp_testdata::{argmax, max_abs_diff, model_reference, MODEL_FIXTURES as FIXTURES};

fn values(t: Tensor<Cuda, 1>) -> Vec<f32> {
    llmjp_model::read_f32(t).unwrap()
}

/// Max logit error over all prompts, and how many greedy tokens agree with transformers
/// before the first difference, per prompt.
fn run(dtype: ComputeDtype) -> Vec<(String, f32, Vec<usize>)> {
    let device = Default::default();
    FIXTURES
        .iter()
        .map(|name| {
            let dir = llmjp_testdata::fixture_dir(name);
            let model = CausalLm::<Cuda>::from_dir(&dir, dtype, &device).unwrap();
            let reference = model_reference(name);
            let mut max_err = 0f32;
            let mut agree = Vec::new();
            for p in &reference.prompts {
                let mut cache = model.new_cache(p.ids.len() + p.greedy.len());
                let mut logits = values(model.forward_last(&p.ids, &mut cache).unwrap());
                max_err = max_err.max(max_abs_diff(&logits, &p.last_logits));
                let mut n = 0;
                for &expected in &p.greedy {
                    let next = argmax(&logits);
                    if next != expected {
                        break;
                    }
                    n += 1;
                    logits = values(model.forward_last(&[next], &mut cache).unwrap());
                }
                agree.push(n);
            }
            eprintln!(
                "{name} {dtype}: max abs logit error {max_err:.2e}, greedy agreement {agree:?}"
            );
            (name.to_string(), max_err, agree)
        })
        .collect()
}

#[test]
fn parity_on_cuda_f32() {
    if !cuda_available() {
        eprintln!("skipping: no CUDA driver (libcuda.so.1) on this machine");
        return;
    }
    for (name, err, agree) in run(ComputeDtype::F32) {
        assert!(err <= 1e-3, "{name}: {err}");
        assert!(agree.iter().all(|&n| n == 32), "{name}: {agree:?}");
    }
}

#[test]
fn parity_on_cuda_bf16() {
    if !cuda_available() {
        eprintln!("skipping: no CUDA driver (libcuda.so.1) on this machine");
        return;
    }
    // bf16 keeps about 3 significant digits: logits agree loosely, and greedy paths agree
    // until two candidates are closer than bf16 can tell apart.
    for (name, err, _) in run(ComputeDtype::BF16) {
        assert!(err <= 0.25, "{name}: {err}");
    }
}
