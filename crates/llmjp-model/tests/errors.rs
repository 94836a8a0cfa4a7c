//! Bad input and broken checkpoints give typed errors, never panics.

use std::fs;
use std::path::{Path, PathBuf};

use llmjp_model::backend::Cpu;
use llmjp_model::{CausalLm, ComputeDtype, ModelError};
use llmjp_weights::WeightsError;

fn model(name: &str) -> CausalLm<Cpu> {
    CausalLm::from_dir(
        llmjp_testdata::fixture_dir(name),
        ComputeDtype::F32,
        &Default::default(),
    )
    .unwrap()
}

/// A copy of a fixture whose config.json is edited by `edit`.
fn edited_copy(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = llmjp_testdata::fixture_dir(name);
    let dst = std::env::temp_dir().join(format!(
        "llmjp-model-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dst);
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dst.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&config_path, config.to_string()).unwrap();
    dst
}

fn load(dir: &Path) -> Result<CausalLm<Cpu>, ModelError> {
    CausalLm::from_dir(dir, ComputeDtype::F32, &Default::default())
}

#[test]
fn exceeding_the_cache_or_context_is_an_error() {
    let model = model("llama-mha-bf16");
    let mut cache = model.new_cache(4);
    model.forward_last(&[1, 2, 3], &mut cache).unwrap();
    let err = model.forward_last(&[4, 5], &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                needed: 5,
                limit: 4,
                ..
            }
        ),
        "{err}"
    );
    // The failed step changed nothing: the cache still takes one more token.
    model.forward_last(&[4], &mut cache).unwrap();

    let context = model.config().max_position_embeddings;
    let mut cache = model.new_cache(usize::MAX);
    assert_eq!(cache.capacity(), context);
    let too_long = vec![1; context + 1];
    let err = model.forward_last(&too_long, &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                reason: "max_position_embeddings",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_token_ids_and_empty_input() {
    let model = model("llama-mha-bf16");
    let mut cache = model.new_cache(8);
    let err = model.forward_last(&[1, 512], &mut cache).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InvalidToken {
                id: 512,
                vocab_size: 512
            }
        ),
        "{err}"
    );
    assert!(matches!(
        model.forward_last(&[], &mut cache),
        Err(ModelError::EmptyInput)
    ));
    assert!(cache.is_empty());
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = edited_copy("llama-mha-bf16", |c| c["intermediate_size"] = 100.into());
    let err = load(&dir).unwrap_err();
    match err {
        ModelError::Weights(WeightsError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        }) => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(expected, [100, 64]);
            assert_eq!(found, [128, 64]);
        }
        other => panic!("unexpected {other}"),
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_tensor_names_the_tensor() {
    let dir = edited_copy("llama-mha-bf16", |c| c["num_hidden_layers"] = 3.into());
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, ModelError::Weights(WeightsError::MissingTensor { name, .. }) if name.starts_with("model.layers.2.")),
        "{err}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_architecture_is_named() {
    let dir = edited_copy("llama-mha-bf16", |c| {
        c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"])
    });
    let err = load(&dir).unwrap_err();
    assert!(err.to_string().contains("Qwen2ForCausalLM"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_weights_are_an_error() {
    let dir = edited_copy("llama-mha-bf16", |_| {});
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Weights(WeightsError::InvalidSafetensors { .. })
        ),
        "{err}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dtype_names_parse() {
    assert_eq!("bf16".parse::<ComputeDtype>().unwrap(), ComputeDtype::BF16);
    assert_eq!(
        "float16".parse::<ComputeDtype>().unwrap(),
        ComputeDtype::F16
    );
    assert!(matches!(
        "f64".parse::<ComputeDtype>(),
        Err(ModelError::UnknownDtype(_))
    ));
}

#[test]
fn a_cache_from_another_model_is_refused() {
    let f32_model = model("llama-mha-bf16");
    let dir = llmjp_testdata::fixture_dir("llama-mha-bf16");
    let bf16_model =
        CausalLm::<Cpu>::from_dir(&dir, ComputeDtype::BF16, &Default::default()).unwrap();
    let gqa_model = model("llama-gqa-f32-sharded");
    for (model, mut cache) in [
        (&f32_model, bf16_model.new_cache(8)),
        (&bf16_model, f32_model.new_cache(8)),
        (&f32_model, gqa_model.new_cache(8)),
    ] {
        let err = model.forward_last(&[1, 2], &mut cache).unwrap_err();
        assert!(matches!(err, ModelError::CacheMismatch(_)), "{err}");
        assert!(err.to_string().contains("new_cache"), "{err}");
    }
}

/// A weight stored in a dtype no op set runs (here I16, as an unknown quantized format
/// would be) is a typed error naming the tensor, on every op set.
#[test]
fn weights_in_a_dtype_we_cannot_run_are_refused() {
    let dir = edited_copy("llama-mha-bf16", |_| {});
    let path = dir.join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    let at = header.find(name).unwrap();
    let dtype = at + header[at..].find("\"BF16\"").unwrap();
    // Same length (JSON allows the space), same element size: the file stays valid.
    let edited = format!("{}\"I16\" {}", &header[..dtype], &header[dtype + 6..]);
    bytes[8..8 + header_len].copy_from_slice(edited.as_bytes());
    fs::write(&path, bytes).unwrap();
    for compute in [ComputeDtype::F32, ComputeDtype::BF16] {
        let err = CausalLm::<Cpu>::from_dir(&dir, compute, &Default::default()).unwrap_err();
        assert!(
            matches!(&err, ModelError::Weights(WeightsError::UnsupportedDtype { name: n, dtype, .. }) if n == name && *dtype == llmjp_weights::Dtype::I16),
            "{compute}: {err}"
        );
    }
    fs::remove_dir_all(dir).unwrap();
}
