//! End to end: the generation pipeline on a tiny model with the real llm-jp vocabulary and
//! tokenizer, against transformers' `generate` (`xtask/golden/model_golden.py`).

use std::fs;
use std::path::PathBuf;

use llmjp::backend::Cpu;
use llmjp::{
    ComputeDtype, FinishReason, GenerateOptions, Generation, LlmError, LoadOptions, Message,
    ModelSource, Pipeline, SamplingParams,
};
use serde_json::Value;

fn fixture() -> PathBuf {
    llmjp_testdata::fixture_dir("tiny-llmjp")
}

fn load_from(dir: &std::path::Path) -> Option<Pipeline<Cpu>> {
    let tokenizer_dir = llmjp_testdata::tokenizer_dir()?;
    // The references are transformers' f32 computations.
    let options = LoadOptions {
        dtype: ComputeDtype::F32.into(),
        tokenizer_dir: Some(tokenizer_dir),
        ..LoadOptions::default()
    };
    Some(
        Pipeline::load(
            &ModelSource::Dir(dir.to_path_buf()),
            &options,
            &Default::default(),
            &mut |_, _| {},
        )
        .unwrap(),
    )
}

fn reference() -> Value {
    serde_json::from_str(&fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap()
}

fn messages(reference: &Value) -> Vec<Message> {
    serde_json::from_value(reference["messages"].clone()).unwrap()
}

fn greedy(max_new_tokens: usize, repetition_penalty: f32) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: SamplingParams {
            repetition_penalty,
            ..SamplingParams::greedy()
        },
        stop: vec![],
        ignore_eos: false,
        processors: vec![],
    }
}

/// Generates and also collects the streamed chunks.
fn run(
    pipeline: &Pipeline<Cpu>,
    prompt: &[u32],
    options: &GenerateOptions,
) -> (Generation, Vec<String>) {
    let mut chunks = Vec::new();
    let out = pipeline
        .generate(prompt, options, &mut |chunk| {
            chunks.push(chunk.to_string());
            true
        })
        .unwrap();
    (out, chunks)
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn greedy_generation_equals_transformers() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let reference = reference();
    for case in reference["cases"].as_array().unwrap() {
        let prompt = match case["prompt"].as_str().unwrap() {
            "chat" => pipeline.encode_chat(&messages(&reference)).unwrap(),
            _ => pipeline
                .encode_raw(reference["raw_prompt"].as_str().unwrap())
                .unwrap(),
        };
        assert_eq!(prompt, ids(&case["prompt_ids"]), "prompt ids");
        let expected = ids(&case["generated_ids"]);
        let penalty = case["repetition_penalty"].as_f64().unwrap() as f32;
        let (out, chunks) = run(&pipeline, &prompt, &greedy(expected.len(), penalty));
        assert_eq!(out.generated_ids, expected, "{case}");
        assert_eq!(out.text, case["text"].as_str().unwrap());
        assert_eq!(
            chunks.concat(),
            out.text,
            "streamed chunks concatenate to the text"
        );
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert_eq!(out.timings.prefill_tokens, prompt.len());
        assert_eq!(out.timings.decode_tokens, expected.len() - 1);
    }
}

#[test]
fn chat_renders_and_encodes_the_seed_prompt() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let reference = reference();
    let options = greedy(3, 1.0);
    let out = pipeline
        .chat(&messages(&reference), &options, &mut |_| true)
        .unwrap();
    assert_eq!(out.prompt_ids, ids(&reference["cases"][0]["prompt_ids"]));
    assert_eq!(out.prompt_ids.len(), 38);
    assert_eq!(
        out.generated_ids,
        ids(&reference["cases"][0]["generated_ids"])[..3]
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let prompt = pipeline.encode_raw("日本の首都は").unwrap();
    let options = |seed| GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams {
            temperature: 1.5,
            top_k: None,
            top_p: 1.0,
            ..SamplingParams::model_card().with_seed(seed)
        },
        stop: vec![],
        ignore_eos: false,
        processors: vec![],
    };
    let a = run(&pipeline, &prompt, &options(7)).0;
    let b = run(&pipeline, &prompt, &options(7)).0;
    let c = run(&pipeline, &prompt, &options(8)).0;
    assert_eq!(a.generated_ids, b.generated_ids);
    assert_eq!(a.text, b.text);
    assert_ne!(a.generated_ids, c.generated_ids);
    // The model card's defaults run too.
    let d = run(
        &pipeline,
        &prompt,
        &GenerateOptions {
            max_new_tokens: 5,
            ..GenerateOptions::default()
        },
    )
    .0;
    assert_eq!(d.generated_ids.len(), 5);
}

#[test]
fn stop_strings_end_generation_before_them() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let reference = reference();
    let case = &reference["cases"][0];
    let full = case["text"].as_str().unwrap();
    // A stop string from the middle of the greedy text.
    let stop: String = full.chars().skip(8).take(3).collect();
    let cut = full.find(&stop).unwrap();
    let prompt = ids(&case["prompt_ids"]);
    let mut options = greedy(20, 1.0);
    options.stop = vec![stop.clone(), "never appears ###".into()];
    let (out, chunks) = run(&pipeline, &prompt, &options);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, full[..cut]);
    assert_eq!(chunks.concat(), out.text);
    assert!(out.generated_ids.len() < 20);
}

#[test]
fn max_new_tokens_ends_with_length() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let prompt = pipeline.encode_raw("日本の首都は").unwrap();
    let (out, _) = run(&pipeline, &prompt, &greedy(4, 1.0));
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.generated_ids.len(), 4);
}

#[test]
fn eos_ids_from_generation_config_end_generation() {
    let Some(_) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let reference = reference();
    let case = &reference["cases"][0];
    let expected = ids(&case["generated_ids"]);
    // A copy of the model whose generation_config makes the 5th greedy token an EOS.
    let dir = std::env::temp_dir().join(format!("llmjp-e2e-eos-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        fs::copy(fixture().join(file), dir.join(file)).unwrap();
    }
    fs::write(
        dir.join("generation_config.json"),
        format!(r#"{{"eos_token_id": [2, {}]}}"#, expected[4]),
    )
    .unwrap();
    let pipeline = load_from(&dir).unwrap();
    assert_eq!(pipeline.eos_ids(), [2, expected[4]]);
    let (out, chunks) = run(&pipeline, &ids(&case["prompt_ids"]), &greedy(20, 1.0));
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.generated_ids, expected[..5]);
    assert_eq!(
        out.text,
        pipeline.tokenizer().decode(&expected[..4], true).unwrap()
    );
    assert_eq!(chunks.concat(), out.text);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_full_context_ends_with_context() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let context = pipeline.model().config().max_position_embeddings;
    let prompt = ids(&reference()["cases"][0]["prompt_ids"]);
    let (out, _) = run(&pipeline, &prompt, &greedy(100, 1.0));
    assert_eq!(out.finish_reason, FinishReason::Context);
    assert_eq!(prompt.len() + out.generated_ids.len(), context);
}

#[test]
fn bad_requests_are_typed_errors() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let context = pipeline.model().config().max_position_embeddings;
    let long = vec![5u32; context];
    let err = pipeline
        .generate(&long, &greedy(1, 1.0), &mut |_| true)
        .unwrap_err();
    assert!(matches!(err, LlmError::PromptTooLong { .. }), "{err}");
    assert!(matches!(
        pipeline.generate(&[], &greedy(1, 1.0), &mut |_| true),
        Err(LlmError::EmptyPrompt)
    ));
    let bad = GenerateOptions {
        sampling: SamplingParams {
            top_p: 0.0,
            ..SamplingParams::model_card()
        },
        ..GenerateOptions::default()
    };
    assert!(matches!(
        pipeline.generate(&[1], &bad, &mut |_| true),
        Err(LlmError::Sampler(_))
    ));
    assert!(matches!(
        pipeline.generate(&[1], &greedy(0, 1.0), &mut |_| true),
        Err(LlmError::InvalidOption(_))
    ));
}

#[test]
fn the_callback_can_cancel() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    let prompt = pipeline.encode_raw("日本の首都は").unwrap();
    let mut calls = 0;
    let out = pipeline
        .generate(&prompt, &greedy(20, 1.0), &mut |_| {
            calls += 1;
            calls < 3
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert!(out.generated_ids.len() < 20);
}

/// A caller's logits processor, passed in the options, changes what is generated.
#[test]
fn a_callers_processor_takes_part() {
    let Some(pipeline) = load_from(&fixture()) else {
        return;
    };
    #[derive(Debug)]
    struct Ban(u32);
    impl llmjp::LogitsProcessor for Ban {
        fn process(&self, logits: &mut [f32], _context: &[u32]) {
            logits[self.0 as usize] = f32::NEG_INFINITY;
        }
    }
    let prompt = pipeline.encode_raw("日本の首都は").unwrap();
    let plain = run(&pipeline, &prompt, &greedy(3, 1.0)).0;
    let first = plain.generated_ids[0];
    let options = GenerateOptions {
        processors: vec![std::sync::Arc::new(Ban(first))],
        ..greedy(3, 1.0)
    };
    let banned = run(&pipeline, &prompt, &options).0;
    assert_ne!(banned.generated_ids[0], first);
    assert!(!banned.generated_ids.contains(&first));
}
