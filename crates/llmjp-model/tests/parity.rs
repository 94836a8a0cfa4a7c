//! Logits and greedy continuations equal transformers' on the tiny fixtures
//! (`xtask/golden/model_golden.py`), on the CPU in f32, on both op sets: the reference
//! (burn-flex's own ops) and the CPU kernels (host norms, RoPE, attention and SwiGLU; f32
//! weights stay dense tensors). Batches of ragged sequences give each sequence's own
//! numbers.

use std::sync::Arc;

use llmjp_model::backend::Cpu;
use llmjp_model::cpu::CpuKernels;
use llmjp_model::ops::{DecoderOps, Reference};
use llmjp_model::{read_f32, CausalLm, ComputeDtype, ModelConfig, Sequence};
use llmjp_testdata::{
    argmax, max_abs_diff, model_reference, ModelReference, MODEL_FIXTURES as FIXTURES,
};
use llmjp_weights::Checkpoint;

const TOLERANCE: f32 = 1e-4;

/// The op sets every test runs on.
fn op_sets() -> Vec<Arc<dyn DecoderOps<Cpu>>> {
    vec![Arc::new(Reference), Arc::new(CpuKernels::new().unwrap())]
}

/// Each fixture in f32 on each op set, with its reference.
fn models() -> Vec<(String, CausalLm<Cpu>, ModelReference)> {
    let mut models = Vec::new();
    for name in FIXTURES {
        let dir = llmjp_testdata::fixture_dir(name);
        for ops in op_sets() {
            let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
            let checkpoint = Checkpoint::open(&dir).unwrap();
            let label = format!("{name} on the {}", ops.name());
            let model = CausalLm::load_with_ops(
                config,
                &checkpoint,
                ComputeDtype::F32,
                &Default::default(),
                ops,
                &mut |_, _| {},
            )
            .unwrap();
            models.push((label, model, model_reference(name)));
        }
    }
    models
}

fn to_vec<const D: usize>(t: burn::tensor::Tensor<Cpu, D>) -> Vec<f32> {
    read_f32(t).unwrap()
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
    for (name, model, reference) in models() {
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
    for (name, model, reference) in models() {
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
    for (name, model, reference) in models() {
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

#[test]
fn a_batch_gives_each_sequence_its_own_logits() {
    for (name, model, reference) in models() {
        let vocab = model.config().vocab_size;
        let prompts: Vec<&[u32]> = reference.prompts.iter().map(|p| p.ids.as_slice()).collect();
        // Alone: each prompt's prefill, then one step.
        let mut alone = Vec::new();
        for ids in &prompts {
            let mut cache = model.new_cache(ids.len() + 1);
            let first = to_vec(model.forward_last(ids, &mut cache).unwrap());
            let second = to_vec(
                model
                    .forward_last(&[argmax(&first) as u32], &mut cache)
                    .unwrap(),
            );
            alone.push((first, second));
        }
        // Together: ragged prefills in one pass, then one decode step each in one pass.
        let mut caches: Vec<_> = prompts
            .iter()
            .map(|ids| model.new_cache(ids.len() + 1))
            .collect();
        let mut batch: Vec<Sequence<'_, Cpu>> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| Sequence { ids, cache })
            .collect();
        let firsts = to_vec(model.forward_batch(&mut batch).unwrap());
        let next: Vec<[u32; 1]> = firsts
            .chunks_exact(vocab)
            .map(|l| [argmax(l) as u32])
            .collect();
        let mut batch: Vec<Sequence<'_, Cpu>> = next
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| Sequence { ids, cache })
            .collect();
        let seconds = to_vec(model.forward_batch(&mut batch).unwrap());
        for (i, (first, second)) in alone.iter().enumerate() {
            let err = max_abs_diff(first, &firsts[i * vocab..(i + 1) * vocab])
                .max(max_abs_diff(second, &seconds[i * vocab..(i + 1) * vocab]));
            assert!(err <= 1e-5, "{name}, sequence {i}: {err}");
        }
    }
}

/// Caches start small and grow as positions are used (bounded memory for a large declared
/// context); growing keeps what was written, so chunks that cross the growth points give
/// the one-shot prefill's numbers.
#[test]
fn caches_grow_with_the_sequence_and_keep_their_contents() {
    let name = "llama-gqa-f32-sharded";
    let dir = llmjp_testdata::fixture_dir(name);
    for ops in op_sets() {
        let mut config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        config.max_position_embeddings = 1 << 20;
        let label = ops.name();
        let model = CausalLm::load_with_ops(
            config,
            &Checkpoint::open(&dir).unwrap(),
            ComputeDtype::F32,
            &Default::default(),
            ops,
            &mut |_, _| {},
        )
        .unwrap();
        let ids: Vec<u32> = (0..600).map(|i| (i * 37 % 200) as u32 + 3).collect();
        // A cache for the whole declared context allocates only what is used.
        let mut cache = model.new_cache(usize::MAX);
        assert_eq!(cache.capacity(), 1 << 20, "{label}");
        assert_eq!(cache.allocated(), 256, "{label}");
        let mut allocated = Vec::new();
        let mut chunked = Vec::new();
        for chunk in ids.chunks(100) {
            chunked = to_vec(model.forward_last(chunk, &mut cache).unwrap());
            allocated.push(cache.allocated());
        }
        assert_eq!(allocated, [256, 256, 512, 512, 512, 1024], "{label}");
        let mut cache = model.new_cache(ids.len());
        let one_shot = to_vec(model.forward_last(&ids, &mut cache).unwrap());
        let err = max_abs_diff(&chunked, &one_shot);
        assert!(err <= TOLERANCE, "{label}: {err}");
    }
}

#[test]
fn forked_caches_continue_as_a_fresh_prefill_and_copy_on_write() {
    let name = "llama-gqa-f32-sharded";
    let dir = llmjp_testdata::fixture_dir(name);
    for ops in op_sets() {
        let model = CausalLm::load_with_ops(
            ModelConfig::from_file(&dir.join("config.json")).unwrap(),
            &Checkpoint::open(&dir).unwrap(),
            ComputeDtype::F32,
            &Default::default(),
            ops,
            &mut |_, _| {},
        )
        .unwrap();
        let label = model.ops().name();
        // A shared prefix of 45 positions: one whole page and part of a second.
        let prefix: Vec<u32> = (0..45).map(|i| (i * 13 % 150) as u32 + 3).collect();
        let tails: [&[u32]; 2] = [&[7, 8, 9, 10], &[200, 3]];
        let mut donor = model.new_cache(64);
        model.forward_last(&prefix, &mut donor).unwrap();
        let donor_before = to_vec(model.forward(&[5], &mut donor.fork(45, 64)).unwrap());
        let memory_before = model.kv_memory().bytes();
        for tail in tails {
            let mut shared = donor.fork(prefix.len(), 64);
            assert_eq!(shared.len(), 45, "{label}");
            let forked = to_vec(model.forward(tail, &mut shared).unwrap());
            let mut fresh = model.new_cache(64);
            let whole: Vec<u32> = prefix.iter().chain(tail).copied().collect();
            let fresh = to_vec(model.forward(&whole, &mut fresh).unwrap());
            let fresh_tail = &fresh[fresh.len() - forked.len()..];
            let err = max_abs_diff(&forked, fresh_tail);
            assert!(err <= TOLERANCE, "{label} {tail:?}: {err}");
            // A fork of part of the prefix starts from there.
            let mut part = donor.fork(20, 64);
            let from_part = to_vec(model.forward_last(&whole[20..], &mut part).unwrap());
            let err = max_abs_diff(&from_part, &fresh[fresh.len() - from_part.len()..]);
            assert!(err <= TOLERANCE, "{label} part {tail:?}: {err}");
        }
        // Writes to the forks never reached the donor.
        let donor_after = to_vec(model.forward(&[5], &mut donor.fork(45, 64)).unwrap());
        assert_eq!(donor_before, donor_after, "{label}");
        if label == "cpu kernels" {
            // The whole first page is shared; the partial one was copied by each writer.
            let fork = donor.fork(45, 64);
            assert_eq!(fork.shared_pages(), 2, "{label}");
            assert_eq!(model.kv_memory().bytes(), memory_before, "{label}");
            let page = 32 * model.kv_bytes_per_position();
            let mut writer = donor.fork(45, 64);
            model.forward_last(&[9], &mut writer).unwrap();
            assert_eq!(model.kv_memory().bytes(), memory_before + page, "{label}");
            assert_eq!(writer.shared_pages(), 1, "{label}");
            drop((writer, fork, donor));
            assert_eq!(model.kv_memory().bytes(), 0, "{label}");
        } else {
            // Tensor caches: forks share the donor's tensors (counted once) until one
            // writes, which copies them (counted again).
            let fork = donor.fork(45, 64);
            assert_eq!(model.kv_memory().bytes(), memory_before, "{label}");
            let mut writer = donor.fork(45, 64);
            model.forward_last(&[9], &mut writer).unwrap();
            assert_eq!(model.kv_memory().bytes(), 2 * memory_before, "{label}");
            drop((writer, fork, donor));
            assert_eq!(model.kv_memory().bytes(), 0, "{label}");
        }
    }
}
