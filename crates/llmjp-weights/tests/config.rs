//! `config.json` in both styles, the real llm-jp-3.1 configs, and configs we refuse.

use std::path::Path;

use llmjp_weights::{Architecture, GenerationConfig, ModelConfig, WeightsError};
use serde_json::{json, Value};

fn parse(json: Value) -> Result<ModelConfig, WeightsError> {
    ModelConfig::from_json(json, Path::new("config.json"))
}

fn llama() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
    })
}

#[test]
fn real_llm_jp_configs() {
    let Some(dir) = llmjp_testdata::configs_dir() else {
        return;
    };
    let small = ModelConfig::from_file(&dir.join("llm-jp-3.1-1.8b.config.json")).unwrap();
    assert_eq!(small.architecture, Architecture::Llama);
    assert_eq!(
        (small.hidden_size, small.num_hidden_layers, small.head_dim),
        (2048, 24, 128)
    );
    assert_eq!((small.vocab_size, small.num_key_value_heads), (99_584, 16));
    assert_eq!((small.rms_norm_eps, small.rope_theta), (1e-5, 10_000.0));
    assert_eq!(small.eos_token_ids, [2]);
    assert_eq!(small.dtype.as_deref(), Some("bfloat16"));
    assert!(!small.tie_word_embeddings);

    let big = ModelConfig::from_file(&dir.join("llm-jp-3.1-13b.config.json")).unwrap();
    assert_eq!(
        (big.hidden_size, big.num_attention_heads, big.head_dim),
        (5120, 40, 128)
    );

    let moe = ModelConfig::from_file(&dir.join("llm-jp-3.1-8x13b.config.json")).unwrap();
    assert_eq!(moe.architecture, Architecture::Mixtral);
    assert_eq!((moe.num_local_experts, moe.num_experts_per_tok), (8, 2));
    assert_eq!(moe.intermediate_size, 13_824);

    let generation = GenerationConfig::from_file(&dir.join("generation_config.json")).unwrap();
    assert_eq!(generation.eos_token_ids, [2]);
    assert_eq!(generation.bos_token_id, Some(1));
}

#[test]
fn transformers_5_style() {
    let mut config = llama();
    config["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
    config["dtype"] = json!("float32");
    config["num_key_value_heads"] = json!(2);
    config["head_dim"] = json!(8);
    config["eos_token_id"] = json!([2, 7]);
    let config = parse(config).unwrap();
    assert_eq!(config.rope_theta, 500_000.0);
    assert_eq!(config.dtype.as_deref(), Some("float32"));
    assert_eq!((config.num_key_value_heads, config.head_dim), (2, 8));
    assert_eq!(config.eos_token_ids, [2, 7]);
}

#[test]
fn defaults_follow_transformers() {
    let config = parse(llama()).unwrap();
    assert_eq!(config.num_key_value_heads, 4);
    assert_eq!(config.head_dim, 4);
    assert_eq!(config.rope_theta, 10_000.0);
    assert_eq!(config.rms_norm_eps, 1e-6);
}

#[test]
fn mixtral_settings() {
    let mut config = llama();
    config["architectures"] = json!(["MixtralForCausalLM"]);
    config["num_local_experts"] = json!(4);
    config["num_experts_per_tok"] = json!(1);
    let config = parse(config).unwrap();
    assert_eq!(
        (config.num_local_experts, config.num_experts_per_tok),
        (4, 1)
    );
}

#[test]
fn unknown_architectures_are_named() {
    let mut config = llama();
    config["architectures"] = json!(["GPT2LMHeadModel"]);
    let err = parse(config).unwrap_err();
    assert!(
        matches!(&err, WeightsError::UnsupportedArchitecture { found, .. } if found == "GPT2LMHeadModel")
    );
    assert!(err.to_string().contains("GPT2LMHeadModel"));
}

#[test]
fn unsupported_settings_are_refused() {
    let cases = [
        (
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0}),
        ),
        (
            "rope_parameters",
            json!({"rope_type": "yarn", "rope_theta": 10000.0}),
        ),
        ("hidden_act", json!("gelu")),
        ("attention_bias", json!(true)),
        ("num_key_value_heads", json!(3)),
    ];
    for (field, value) in cases {
        let mut config = llama();
        config[field] = value;
        let err = parse(config).unwrap_err();
        assert!(
            matches!(err, WeightsError::InvalidConfig { .. }),
            "{field}: {err}"
        );
    }
    let mut config = llama();
    config["architectures"] = json!(["MixtralForCausalLM"]);
    config["num_experts_per_tok"] = json!(9);
    assert!(matches!(
        parse(config),
        Err(WeightsError::InvalidConfig { .. })
    ));
}

#[test]
fn malformed_configs_are_json_errors() {
    let mut config = llama();
    config.as_object_mut().unwrap().remove("hidden_size");
    assert!(matches!(parse(config), Err(WeightsError::Json { .. })));
    let err = ModelConfig::from_file(Path::new("/no/such/config.json")).unwrap_err();
    assert!(matches!(err, WeightsError::NotFound { .. }));
}

/// Any number in any field: either a typed error, or a config whose sizes stay within the
/// bounds (so that nothing computed from them can overflow or allocate absurdly).
mod hostile_values {
    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 12] = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "bos_token_id",
        "eos_token_id",
    ];

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..70_000).prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |x| x.is_finite())
                .prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    proptest! {
        #[test]
        fn never_panic_and_stay_bounded(field in 0..FIELDS.len(), value in number()) {
            let mut json = llama();
            json[FIELDS[field]] = value;
            if let Ok(config) = parse(json) {
                let elements = config
                    .vocab_size
                    .checked_mul(config.hidden_size)
                    .and_then(|e| e.checked_mul(config.num_hidden_layers));
                prop_assert!(elements.is_some());
                prop_assert!(config.max_position_embeddings >= 1);
                prop_assert!(config.max_position_embeddings <= llmjp_weights::MAX_POSITIONS);
                prop_assert!(config.rope_theta.is_finite() && config.rope_theta > 1.0);
                prop_assert!(config.rms_norm_eps > 0.0 && config.rms_norm_eps < 1.0);
                prop_assert!(config.head_dim % 2 == 0 && config.head_dim > 0);
            }
        }
    }
}
