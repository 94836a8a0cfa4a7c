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
