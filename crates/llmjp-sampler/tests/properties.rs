//! Properties of the processors and the sampler.

use llmjp_sampler::{processors, Sampler, SamplerError, SamplingParams};
use proptest::prelude::*;

fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-20.0f32..20.0, 1..200)
}

fn kept(x: &[f32]) -> Vec<usize> {
    (0..x.len())
        .filter(|&i| x[i] != f32::NEG_INFINITY)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// top-p keeps the smallest set of most likely tokens whose mass reaches p.
    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p(logits in logits_strategy(), p in 0.01f32..1.0) {
        let probs = processors::softmax(&logits);
        let mut x = logits.clone();
        processors::top_p(&mut x, p);
        let kept = kept(&x);
        prop_assert!(!kept.is_empty());
        let mass: f32 = kept.iter().map(|&i| probs[i]).sum();
        prop_assert!(mass >= p - 1e-4, "kept mass {} < p {}", mass, p);
        // Every kept token is at least as likely as every removed one.
        let min_kept = kept.iter().map(|&i| logits[i]).fold(f32::INFINITY, f32::min);
        for i in 0..logits.len() {
            if x[i] == f32::NEG_INFINITY {
                prop_assert!(logits[i] <= min_kept);
            }
        }
        // Removing the least likely kept token would fall short of p.
        if kept.len() > 1 {
            let least = kept.iter().map(|&i| probs[i]).fold(f32::INFINITY, f32::min);
            prop_assert!(mass - least < p + 1e-4);
        }
    }

    /// top-k keeps k tokens (more only on ties) and never a less likely one.
    #[test]
    fn top_k_keeps_the_k_most_likely(logits in logits_strategy(), k in 1usize..50) {
        let mut x = logits.clone();
        processors::top_k(&mut x, k);
        let kept = kept(&x);
        prop_assert!(kept.len() >= k.min(logits.len()));
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k.min(logits.len()) - 1];
        for i in 0..logits.len() {
            prop_assert_eq!(x[i] != f32::NEG_INFINITY, logits[i] >= kth);
        }
    }

    /// A filtered token is never sampled.
    #[test]
    fn filtered_tokens_are_never_sampled(logits in logits_strategy(), seed in any::<u64>(), p in 0.05f32..1.0, k in 1usize..20) {
        let params = SamplingParams { temperature: 0.8, top_k: Some(k), top_p: p, min_p: Some(0.05), repetition_penalty: 1.1, seed };
        let mut sampler = Sampler::new(params).unwrap();
        let context = [0u32, 3, 3];
        let mut processed = logits.clone();
        sampler.process(&mut processed, &context);
        for _ in 0..5 {
            let token = sampler.sample(&logits, &context).unwrap() as usize;
            prop_assert!(processed[token] != f32::NEG_INFINITY);
        }
    }

    /// Greedy equals argmax.
    #[test]
    fn greedy_is_argmax(logits in logits_strategy()) {
        let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
        prop_assert_eq!(sampler.sample(&logits, &[]).unwrap() as usize, processors::argmax(&logits));
    }

    /// The penalty never changes which untouched id is the most likely among untouched ids.
    #[test]
    fn penalty_keeps_the_argmax_of_untouched_ids(logits in prop::collection::vec(-20.0f32..20.0, 2..200), penalty in 0.1f32..3.0, ids in prop::collection::vec(0u32..200, 0..20)) {
        let mut x = logits.clone();
        processors::repetition_penalty(&mut x, &ids, penalty);
        let untouched: Vec<usize> = (0..logits.len()).filter(|i| !ids.contains(&(*i as u32))).collect();
        for &i in &untouched {
            prop_assert_eq!(x[i], logits[i]);
        }
        if let Some(&first) = untouched.first() {
            let best = |v: &[f32]| untouched.iter().copied().fold(first, |b, i| if v[i] > v[b] { i } else { b });
            prop_assert_eq!(best(&x), best(&logits));
        }
    }

    /// The same seed and logits give the same tokens.
    #[test]
    fn sampling_is_reproducible(logits in logits_strategy(), seed in any::<u64>()) {
        let params = SamplingParams::model_card().with_seed(seed);
        let mut a = Sampler::new(params).unwrap();
        let mut b = Sampler::new(params).unwrap();
        for _ in 0..5 {
            prop_assert_eq!(a.sample(&logits, &[1]).unwrap(), b.sample(&logits, &[1]).unwrap());
        }
    }
}

#[test]
fn invalid_parameters_are_typed_errors() {
    let base = SamplingParams::model_card();
    let cases = [
        (
            SamplingParams {
                temperature: -0.1,
                ..base
            },
            SamplerError::Temperature(-0.1),
        ),
        (
            SamplingParams { top_p: 0.0, ..base },
            SamplerError::TopP(0.0),
        ),
        (
            SamplingParams {
                top_p: 1.01,
                ..base
            },
            SamplerError::TopP(1.01),
        ),
        (
            SamplingParams {
                top_k: Some(0),
                ..base
            },
            SamplerError::TopK(0),
        ),
        (
            SamplingParams {
                min_p: Some(1.5),
                ..base
            },
            SamplerError::MinP(1.5),
        ),
        (
            SamplingParams {
                min_p: Some(-0.5),
                ..base
            },
            SamplerError::MinP(-0.5),
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..base
            },
            SamplerError::RepetitionPenalty(0.0),
        ),
    ];
    for (params, expected) in cases {
        assert_eq!(Sampler::new(params).unwrap_err(), expected);
    }
    assert!(Sampler::new(SamplingParams {
        temperature: f32::NAN,
        ..base
    })
    .is_err());
    assert!(Sampler::new(SamplingParams {
        top_p: f32::NAN,
        ..base
    })
    .is_err());
    assert!(Sampler::new(SamplingParams {
        repetition_penalty: f32::INFINITY,
        ..base
    })
    .is_err());
}

#[test]
fn different_seeds_give_different_streams() {
    let logits = vec![0.0f32; 100];
    let draw = |seed| {
        let mut s = Sampler::new(SamplingParams {
            top_k: None,
            top_p: 1.0,
            ..SamplingParams::model_card().with_seed(seed)
        })
        .unwrap();
        (0..20)
            .map(|_| s.sample(&logits, &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

/// The list follows transformers: penalty, the caller's processors, then the sampling
/// warpers; what a caller adds changes the choice.
#[test]
fn processors_run_in_transformers_order_with_the_callers_after_the_penalty() {
    use llmjp_sampler::processors::LogitsProcessor;
    use std::sync::Arc;

    let names = |list: &[Arc<dyn LogitsProcessor>]| -> Vec<String> {
        list.iter()
            .map(|p| format!("{p:?}").split('(').next().unwrap().to_string())
            .collect()
    };
    let card = SamplingParams::model_card();
    assert_eq!(
        names(&card.processors()),
        ["RepetitionPenalty", "Temperature", "TopK", "TopP"]
    );
    assert!(SamplingParams::greedy().processors().is_empty());

    #[derive(Debug)]
    struct Ban(u32);
    impl LogitsProcessor for Ban {
        fn process(&self, logits: &mut [f32], _context: &[u32]) {
            logits[self.0 as usize] = f32::NEG_INFINITY;
        }
    }
    let with_ban = card.processors_with(vec![Arc::new(Ban(3))]);
    assert_eq!(
        names(&with_ban),
        ["RepetitionPenalty", "Ban", "Temperature", "TopK", "TopP"]
    );
    let logits = [0.0, 1.0, 2.0, 9.0];
    let greedy = SamplingParams::greedy();
    assert_eq!(
        Sampler::new(greedy).unwrap().sample(&logits, &[]).unwrap(),
        3
    );
    let mut banned = Sampler::with_processors(greedy, vec![Arc::new(Ban(3))]).unwrap();
    assert_eq!(banned.sample(&logits, &[]).unwrap(), 2);
}

#[test]
fn non_finite_logits_are_an_error_not_a_token() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for params in [SamplingParams::greedy(), SamplingParams::model_card()] {
            let mut sampler = Sampler::new(params).unwrap();
            let err = sampler.sample(&[0.0, 1.0, bad, 2.0], &[]).unwrap_err();
            assert!(
                matches!(err, SamplerError::NonFiniteLogits { token: 2, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("non-finite"), "{err}");
        }
    }
}

#[test]
fn tiny_temperatures_pick_the_maximum_instead_of_overflowing() {
    let logits = [1.0, 30.0, -5.0, 29.9];
    for temperature in [1e-39_f32, 1e-30, f32::MIN_POSITIVE] {
        let params = SamplingParams {
            temperature,
            top_k: None,
            top_p: 1.0,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 7,
        };
        let mut sampler = Sampler::new(params).unwrap();
        for _ in 0..10 {
            assert_eq!(
                sampler.sample(&logits, &[]).unwrap(),
                1,
                "T = {temperature}"
            );
        }
    }
}
