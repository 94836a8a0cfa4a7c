//! Each processor, and the chain `generate` builds, equals transformers' on random vectors
//! (`xtask/golden/sampler_golden.py`).

use llmjp_sampler::{processors, Sampler, SamplingParams};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Params {
    repetition_penalty: f32,
    temperature: f32,
    top_k: Option<usize>,
    top_p: f32,
    min_p: Option<f32>,
}

#[derive(Deserialize)]
struct Case {
    logits: Vec<f32>,
    input_ids: Vec<u32>,
    params: Params,
    repetition_penalty: Vec<Option<f32>>,
    temperature: Vec<Option<f32>>,
    top_p: Option<Vec<Option<f32>>>,
    top_k: Option<Vec<Option<f32>>>,
    min_p: Option<Vec<Option<f32>>>,
    chain: Vec<Option<f32>>,
}

fn assert_scores(label: &str, ours: &[f32], expected: &[Option<f32>]) {
    assert_eq!(ours.len(), expected.len(), "{label}");
    for (i, (&x, &e)) in ours.iter().zip(expected).enumerate() {
        match e {
            None => assert_eq!(x, f32::NEG_INFINITY, "{label}[{i}] should be filtered"),
            Some(e) => assert!(
                (x - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{label}[{i}]: ours {x}, transformers {e}"
            ),
        }
    }
}

fn golden() -> Golden {
    serde_json::from_str(include_str!("golden/processors.json")).unwrap()
}

#[test]
fn processors_match_transformers() {
    let golden = golden();
    assert!(golden.cases.len() >= 20);
    for (n, case) in golden.cases.iter().enumerate() {
        let p = &case.params;
        let mut x = case.logits.clone();
        processors::repetition_penalty(&mut x, &case.input_ids, p.repetition_penalty);
        assert_scores(
            &format!("case {n} repetition_penalty"),
            &x,
            &case.repetition_penalty,
        );

        let mut x = case.logits.clone();
        processors::temperature(&mut x, p.temperature);
        assert_scores(&format!("case {n} temperature"), &x, &case.temperature);

        if let (Some(k), Some(expected)) = (p.top_k, &case.top_k) {
            let mut x = case.logits.clone();
            processors::top_k(&mut x, k);
            assert_scores(&format!("case {n} top_k"), &x, expected);
        }
        if let Some(expected) = &case.top_p {
            let mut x = case.logits.clone();
            processors::top_p(&mut x, p.top_p);
            assert_scores(&format!("case {n} top_p"), &x, expected);
        }
        if let (Some(min_p), Some(expected)) = (p.min_p, &case.min_p) {
            let mut x = case.logits.clone();
            processors::min_p(&mut x, min_p);
            assert_scores(&format!("case {n} min_p"), &x, expected);
        }
    }
}

#[test]
fn the_chain_matches_generate() {
    for (n, case) in golden().cases.iter().enumerate() {
        let p = &case.params;
        let params = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            seed: 0,
        };
        let mut sampler = Sampler::new(params).unwrap();
        let mut x = case.logits.clone();
        sampler.process(&mut x, &case.input_ids);
        assert_scores(&format!("case {n} chain"), &x, &case.chain);
    }
}
