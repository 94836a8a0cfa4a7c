//! `quantize_checkpoint` writes a folder that reloads in place with the numbers of
//! quantizing on load; hostile quantized folders give typed errors.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use llmjp_model::backend::Cpu;
use llmjp_model::quantize::quantize_checkpoint;
use llmjp_model::{read_f32, CausalLm, ComputeDtype, ModelError, WeightDtype};
use llmjp_weights::quant::BlockFormat;
use llmjp_weights::{Checkpoint, WeightsError};
use safetensors::tensor::View;
use safetensors::Dtype;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "llmjp-quantize-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn logits(dir: &Path, dtype: WeightDtype) -> Vec<f32> {
    let model = CausalLm::<Cpu>::from_dir(dir, dtype, &Default::default()).unwrap();
    let mut cache = model.new_cache(16);
    read_f32(model.forward(&[1, 17, 42, 99, 5, 300], &mut cache).unwrap()).unwrap()
}

#[test]
fn a_saved_checkpoint_reloads_with_the_numbers_of_quantizing_on_load() {
    for (fixture, format) in [
        ("llama-mha-bf16", BlockFormat::Q8_0),
        ("llama-gqa-f32-sharded", BlockFormat::Q4_0),
        ("mixtral-top2-bf16", BlockFormat::Q8_0),
    ] {
        let src = llmjp_testdata::fixture_dir(fixture);
        let out = temp(fixture);
        let mut calls = 0;
        let report = quantize_checkpoint(&src, format, &out, &mut |_, _| calls += 1).unwrap();
        let names = Checkpoint::open(&src).unwrap().names().len();
        assert_eq!(calls, names, "{fixture}");
        assert_eq!(report.quantized + report.copied, names, "{fixture}");
        assert!(
            report.quantized > 0 && report.shards == 1,
            "{fixture}: {report:?}"
        );
        // Tokenizer and generation files come along; the config names the format.
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["quantization_config"]["format"], format.name());
        let on_load = WeightDtype {
            compute: ComputeDtype::BF16,
            quantize: Some(format),
        };
        let expected = logits(&src, on_load);
        // Whatever dtype is asked, the stored format runs, bit for bit as on load.
        assert_eq!(
            logits(&out, ComputeDtype::BF16.into()),
            expected,
            "{fixture}"
        );
        let model =
            CausalLm::<Cpu>::from_dir(&out, ComputeDtype::BF16, &Default::default()).unwrap();
        assert_eq!(model.weight_dtype(), on_load, "{fixture}");
        // Quantizing a quantized folder, or into the source folder, is refused.
        let again = quantize_checkpoint(&out, format, &temp("again"), &mut |_, _| {});
        assert!(
            matches!(again, Err(ModelError::InvalidQuantized(_))),
            "{again:?}"
        );
        let onto = quantize_checkpoint(&out, format, &out, &mut |_, _| {});
        assert!(onto.is_err());
        fs::remove_dir_all(&out).unwrap();
    }
}

/// A quantized copy of the llama fixture with its config edited.
fn quantized_copy(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let out = temp(name);
    let src = llmjp_testdata::fixture_dir("llama-mha-bf16");
    quantize_checkpoint(&src, BlockFormat::Q8_0, &out, &mut |_, _| {}).unwrap();
    let path = out.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
    out
}

fn load_error(dir: &Path) -> ModelError {
    CausalLm::<Cpu>::from_dir(dir, ComputeDtype::BF16, &Default::default()).unwrap_err()
}

#[test]
fn unknown_quantization_configs_are_typed_errors() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "format",
            |c| c["quantization_config"]["format"] = "q3_k".into(),
            "q3_k",
        ),
        (
            "method",
            |c| c["quantization_config"]["quant_method"] = "gptq".into(),
            "gptq",
        ),
        (
            "group",
            |c| c["quantization_config"]["group_size"] = 64.into(),
            "64",
        ),
    ];
    for (name, edit, needle) in cases {
        let dir = quantized_copy(name, edit);
        let err = load_error(&dir);
        assert!(
            matches!(err, ModelError::Weights(WeightsError::InvalidConfig { .. })),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(needle), "{name}: {err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A tensor to write: dtype, shape, bytes.
struct Raw(Dtype, Vec<usize>, Vec<u8>);

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

/// Rewrites one tensor of a single-file checkpoint.
fn rewrite(dir: &Path, name: &str, tensor: Raw) {
    let path = dir.join("model.safetensors");
    let checkpoint = Checkpoint::open(dir).unwrap();
    let mut tensors: Vec<(String, Raw)> = checkpoint
        .names()
        .into_iter()
        .map(|n| {
            let meta = checkpoint.meta(n).unwrap();
            let view = checkpoint.view(n, &meta.shape).unwrap();
            (
                n.to_string(),
                Raw(view.dtype(), meta.shape, view.bytes().to_vec()),
            )
        })
        .collect();
    drop(checkpoint);
    let slot = tensors.iter_mut().find(|(n, _)| n == name).unwrap();
    slot.1 = tensor;
    let views: Vec<(String, &Raw)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn quantized_tensors_of_the_wrong_shape_or_dtype_are_typed_errors() {
    let weight = "model.layers.0.mlp.up_proj.weight";
    let cases = [
        (
            "scale-shape",
            format!("{weight}_scale"),
            Raw(Dtype::F16, vec![128, 3], vec![0; 768]),
        ),
        (
            "scale-dtype",
            format!("{weight}_scale"),
            Raw(Dtype::F32, vec![128, 2], vec![0; 1024]),
        ),
        (
            "values-dtype",
            weight.to_string(),
            Raw(Dtype::I16, vec![128, 32], vec![0; 8192]),
        ),
        (
            "values-shape",
            weight.to_string(),
            Raw(Dtype::I8, vec![128, 32], vec![0; 4096]),
        ),
    ];
    for (name, tensor, raw) in cases {
        let dir = quantized_copy(name, |_| {});
        rewrite(&dir, &tensor, raw);
        let err = load_error(&dir);
        assert!(
            matches!(err, ModelError::InvalidQuantized(_)),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(weight), "{name}: {err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A random bf16 Llama 256 wide with 4 layers (2 heads of 128, MLP 512, vocabulary 512):
/// rows that are whole K-quant super-blocks.
fn wide_llama(dir: &Path) {
    use llmjp_weights::writer::CheckpointWriter;
    fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 128,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "bos_token_id": 1,
        "eos_token_id": 2, "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut next = llmjp_testdata::uniform(21);
    let mut writer = CheckpointWriter::new(dir).unwrap();
    let mut add = |name: String, shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| half::bf16::from_f32(next() * scale).to_le_bytes())
            .collect();
        writer
            .add(name, Dtype::BF16, shape, Cow::Owned(bytes))
            .unwrap();
    };
    add("model.embed_tokens.weight".into(), vec![512, 256], 1.0);
    add("lm_head.weight".into(), vec![512, 256], 0.2);
    add("model.norm.weight".into(), vec![256], 2.0);
    for l in 0..4 {
        let p = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            add(format!("{p}.{norm}.weight"), vec![256], 2.0);
        }
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), vec![256, 256], 0.2);
        }
        add(format!("{p}.mlp.gate_proj.weight"), vec![512, 256], 0.2);
        add(format!("{p}.mlp.up_proj.weight"), vec![512, 256], 0.2);
        add(format!("{p}.mlp.down_proj.weight"), vec![256, 512], 0.2);
    }
    writer.finish().unwrap();
}

#[test]
fn k_quant_mixes_follow_llama_cpp_and_reload_in_place() {
    use llmjp_model::quantize::{kquant_choice, KQuantChoice, QuantizeFormat};
    use llmjp_weights::kquant::{quantize, KQuant, KQuantMix};
    use llmjp_weights::{Layout, ModelConfig};

    let src = temp("wide-llama");
    wide_llama(&src);
    let config = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let source = Checkpoint::open(&src).unwrap();
    let float = logits(&src, ComputeDtype::BF16.into());
    let scale = float.iter().fold(0f32, |m, x| m.max(x.abs()));
    // Q4_0 on load, the yardstick: random uniform weights lose ~7 % per matrix in 4 bits.
    let q4_0 = WeightDtype {
        compute: ComputeDtype::BF16,
        quantize: Some(BlockFormat::Q4_0),
    };
    let q4_0_err = llmjp_testdata::max_abs_diff(&logits(&src, q4_0), &float);
    eprintln!("q4_0: max abs logit error {q4_0_err} of {scale}");
    for mix in KQuantMix::ALL {
        let out = temp(mix.name());
        let report =
            quantize_checkpoint(&src, QuantizeFormat::KMix(mix), &out, &mut |_, _| {}).unwrap();
        assert_eq!(report.quantized, 2 + 4 * 7, "{mix}");
        let checkpoint = Checkpoint::open(&out).unwrap();
        let stored = ModelConfig::from_file(&out.join("config.json")).unwrap();
        assert_eq!(stored.kquant_mix, Some(mix));
        // llama.cpp's choices: the head in Q6_K; for the _m mixes, the value and down
        // projections of layers 2 and 3 of 4 (use_more_bits) in Q6_K; the rest in the base.
        let base = mix.base();
        let more = |l: usize| {
            if mix == KQuantMix::Q6K || l >= 2 {
                KQuant::Q6K
            } else {
                base
            }
        };
        let expected: Vec<(String, KQuant)> = [
            ("lm_head.weight".to_string(), KQuant::Q6K),
            ("model.embed_tokens.weight".to_string(), base),
        ]
        .into_iter()
        .chain((0..4).flat_map(|l| {
            let p = format!("model.layers.{l}");
            [
                (format!("{p}.self_attn.q_proj.weight"), base),
                (format!("{p}.self_attn.v_proj.weight"), more(l)),
                (format!("{p}.mlp.down_proj.weight"), more(l)),
                (format!("{p}.mlp.up_proj.weight"), base),
            ]
        }))
        .collect();
        for (name, format) in &expected {
            assert_eq!(checkpoint.kquant(name), Some(*format), "{mix} {name}");
            let cols = source.meta(name).unwrap().shape[1];
            assert_eq!(
                kquant_choice(&config, mix, name, cols),
                KQuantChoice::K(*format)
            );
            // GGML's reference quantizer's bytes, row by row.
            let values = source
                .read::<f32>(name, &source.meta(name).unwrap().shape, Layout::AsStored)
                .unwrap();
            let (_, view) = checkpoint
                .kquant_view(name, values.len() / cols, cols)
                .unwrap();
            assert_eq!(
                view.bytes(),
                quantize(*format, &values).unwrap(),
                "{mix} {name}"
            );
        }
        // It reloads in place and runs closer to the float model than Q4_0 (Q6_K: several
        // times closer).
        let ours = logits(&out, ComputeDtype::BF16.into());
        let err = llmjp_testdata::max_abs_diff(&ours, &float);
        eprintln!("{mix}: max abs logit error {err} of {scale}");
        let bound = match mix {
            KQuantMix::Q4KM => q4_0_err,
            KQuantMix::Q5KM => 0.7 * q4_0_err,
            KQuantMix::Q6K => 0.45 * q4_0_err,
        };
        assert!(err <= bound, "{mix}: {err} vs Q4_0's {q4_0_err}");
        // Quantizing it again is refused.
        let again = quantize_checkpoint(
            &out,
            QuantizeFormat::KMix(mix),
            &temp("again"),
            &mut |_, _| {},
        );
        assert!(
            matches!(again, Err(ModelError::InvalidQuantized(_))),
            "{again:?}"
        );
        fs::remove_dir_all(&out).unwrap();
    }
    fs::remove_dir_all(&src).unwrap();
}
