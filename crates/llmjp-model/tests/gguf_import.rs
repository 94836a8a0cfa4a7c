//! llama.cpp GGUF files imported (`llmjp_weights::gguf::import`) run with exactly the
//! numbers of quantizing the original checkpoint on load: the blocks are GGML's, the query
//! and key rows come back from llama.cpp's order. Unsupported types and broken files are
//! typed errors. (The same was checked by hand on a 1.8b-shaped file written by llama.cpp's
//! own converter and `llama-quantize`: identical greedy tokens; docs/performance.md.)

use std::fs;
use std::path::{Path, PathBuf};

use llmjp_model::backend::Cpu;
use llmjp_model::{read_f32, CausalLm, ComputeDtype, ModelConfig, WeightDtype};
use llmjp_testdata::gguf::{string, Writer};
use llmjp_weights::gguf::import::import;
use llmjp_weights::gguf::llama::hf_row_order;
use llmjp_weights::quant::{quantize, BlockFormat};
use llmjp_weights::{Checkpoint, Layout, WeightsError};

const FIXTURE: &str = "llama-mha-bf16";

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmjp-gguf-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn u32_meta(w: &mut Writer, key: &str, value: usize) {
    w.meta(key, 4, &(value as u32).to_le_bytes());
}

/// The fixture as llama.cpp's converter and `llama-quantize` write it: llama.cpp's names,
/// q/k rows permuted for its RoPE, matrices in `format` (embedding and head in `outer`),
/// norms in F32.
fn gguf_of_fixture(format: BlockFormat, outer: BlockFormat, odd_tensor: bool) -> Vec<u8> {
    gguf_writer(format, outer, odd_tensor).bytes()
}

/// [`gguf_of_fixture`] before it is written out.
fn gguf_writer(format: BlockFormat, outer: BlockFormat, odd_tensor: bool) -> Writer {
    let dir = llmjp_testdata::fixture_dir(FIXTURE);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let mut w = Writer::default();
    w.meta("general.architecture", 8, &string("llama"));
    u32_meta(&mut w, "llama.block_count", config.num_hidden_layers);
    u32_meta(&mut w, "llama.embedding_length", config.hidden_size);
    u32_meta(
        &mut w,
        "llama.feed_forward_length",
        config.intermediate_size,
    );
    u32_meta(
        &mut w,
        "llama.attention.head_count",
        config.num_attention_heads,
    );
    u32_meta(
        &mut w,
        "llama.attention.head_count_kv",
        config.num_key_value_heads,
    );
    u32_meta(
        &mut w,
        "llama.context_length",
        config.max_position_embeddings,
    );
    u32_meta(&mut w, "llama.vocab_size", config.vocab_size);
    w.meta(
        "llama.attention.layer_norm_rms_epsilon",
        6,
        &1e-5f32.to_le_bytes(),
    );
    w.meta("llama.rope.freq_base", 6, &10000f32.to_le_bytes());
    u32_meta(&mut w, "tokenizer.ggml.bos_token_id", 1);
    u32_meta(&mut w, "tokenizer.ggml.eos_token_id", 2);
    let mut add = |gguf: &str, hf: &str, heads: Option<usize>| {
        let meta = checkpoint.meta(hf).unwrap();
        let values = checkpoint
            .read::<f32>(hf, &meta.shape, Layout::AsStored)
            .unwrap();
        if let [rows, cols] = meta.shape[..] {
            let mut stored = values.clone();
            if let Some(heads) = heads {
                for (h, &g) in hf_row_order(rows, heads).iter().enumerate() {
                    stored[g * cols..(g + 1) * cols]
                        .copy_from_slice(&values[h * cols..(h + 1) * cols]);
                }
            }
            let outer_tensor = gguf == "token_embd.weight" || gguf == "output.weight";
            let format = if outer_tensor { outer } else { format };
            let kind = if format == BlockFormat::Q8_0 { 8 } else { 2 };
            let dims = [cols as u64, rows as u64];
            w.tensor(gguf, &dims, kind, &quantize(format, &stored).unwrap());
        } else {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.tensor(gguf, &[values.len() as u64], 0, &bytes);
        }
    };
    add("token_embd.weight", "model.embed_tokens.weight", None);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let b = format!("blk.{l}");
        add(
            &format!("{b}.attn_norm.weight"),
            &format!("{p}.input_layernorm.weight"),
            None,
        );
        let heads = Some(config.num_attention_heads);
        add(
            &format!("{b}.attn_q.weight"),
            &format!("{p}.self_attn.q_proj.weight"),
            heads,
        );
        let kv = Some(config.num_key_value_heads);
        add(
            &format!("{b}.attn_k.weight"),
            &format!("{p}.self_attn.k_proj.weight"),
            kv,
        );
        add(
            &format!("{b}.attn_v.weight"),
            &format!("{p}.self_attn.v_proj.weight"),
            None,
        );
        add(
            &format!("{b}.attn_output.weight"),
            &format!("{p}.self_attn.o_proj.weight"),
            None,
        );
        add(
            &format!("{b}.ffn_norm.weight"),
            &format!("{p}.post_attention_layernorm.weight"),
            None,
        );
        add(
            &format!("{b}.ffn_gate.weight"),
            &format!("{p}.mlp.gate_proj.weight"),
            None,
        );
        add(
            &format!("{b}.ffn_up.weight"),
            &format!("{p}.mlp.up_proj.weight"),
            None,
        );
        add(
            &format!("{b}.ffn_down.weight"),
            &format!("{p}.mlp.down_proj.weight"),
            None,
        );
    }
    add("output_norm.weight", "model.norm.weight", None);
    add("output.weight", "lm_head.weight", None);
    if odd_tensor {
        // A type not read (Q2_K, GGML type 10): 84 bytes per 256 values.
        w.tensor("blk.0.ffn_gate_inp.weight", &[256, 1], 10, &[0; 84]);
    }
    w
}

fn logits(dir: &Path, dtype: WeightDtype) -> Vec<f32> {
    forward(&CausalLm::<Cpu>::from_dir(dir, dtype, &Default::default()).unwrap())
}

/// The logits of a fixed prompt.
fn forward(model: &CausalLm<Cpu>) -> Vec<f32> {
    let mut cache = model.new_cache(16);
    read_f32(
        model
            .forward(&[1, 17, 42, 99, 5, 300, 7], &mut cache)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn imported_gguf_runs_as_quantizing_on_load() {
    let fixture = llmjp_testdata::fixture_dir(FIXTURE);
    for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
        let dir = temp(format.name());
        let file = dir.join("model.gguf");
        fs::write(&file, gguf_of_fixture(format, BlockFormat::Q8_0, false)).unwrap();
        let out = dir.join("imported");
        let imported = import(&file, Some(&fixture), &out, &mut |_, _| {}).unwrap();
        assert_eq!(imported.format, Some(format));
        assert_eq!(imported.tensors, 2 + 2 * 9 + 1);
        let on_load = WeightDtype {
            compute: ComputeDtype::BF16,
            quantize: Some(format),
        };
        assert_eq!(
            logits(&out, ComputeDtype::BF16.into()),
            logits(&fixture, on_load),
            "{format}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn unsupported_types_and_broken_files_are_typed_errors() {
    let fixture = llmjp_testdata::fixture_dir(FIXTURE);
    let dir = temp("errors");
    let file = dir.join("model.gguf");
    let bytes = gguf_of_fixture(BlockFormat::Q8_0, BlockFormat::Q8_0, true);
    fs::write(&file, &bytes).unwrap();
    let err = import(&file, Some(&fixture), &dir.join("out"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, WeightsError::InvalidGguf { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("blk.0.ffn_gate_inp.weight") && text.contains("type 10"),
        "{text}"
    );
    // Truncated anywhere: an error, never a panic.
    for cut in [10, bytes.len() / 3, bytes.len() - 1] {
        fs::write(&file, &bytes[..cut]).unwrap();
        let err = import(&file, Some(&fixture), &dir.join("out"), &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(err, WeightsError::InvalidGguf { .. }),
            "cut {cut}: {err}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_tokenizer_folder_the_gguf_s_own_tokenizer_is_written() {
    let dir = temp("own-tokenizer");
    let file = dir.join("model.gguf");
    let mut w = gguf_writer(BlockFormat::Q8_0, BlockFormat::Q8_0, false);
    let strings = |items: &[&str]| {
        let mut out = 8u32.to_le_bytes().to_vec();
        out.extend((items.len() as u64).to_le_bytes());
        for item in items {
            out.extend(string(item));
        }
        out
    };
    w.meta("tokenizer.ggml.model", 8, &string("llama"));
    // As llama.cpp's converter pads a vocabulary to the model's vocab_size.
    let vocab = ModelConfig::from_file(&llmjp_testdata::fixture_dir(FIXTURE).join("config.json"))
        .unwrap()
        .vocab_size;
    let mut pieces: Vec<String> = ["<unk>", "<s>", "</s>", "\u{2581}a", "b"]
        .map(String::from)
        .to_vec();
    pieces.extend((pieces.len()..vocab).map(|i| format!("[PAD{i}]")));
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    w.meta("tokenizer.ggml.tokens", 9, &strings(&pieces));
    fs::write(&file, w.bytes()).unwrap();
    let out = dir.join("imported");
    import(&file, None, &out, &mut |_, _| {}).unwrap();
    let tokenizer: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tokenizer["model"]["vocab"].as_array().unwrap().len(), vocab);
    let config = fs::read_to_string(out.join("tokenizer_config.json")).unwrap();
    assert!(config.contains("\"eos_token\": \"</s>\""), "{config}");

    // Without a vocabulary and without a folder: an error that asks for the folder, before
    // anything is written.
    fs::write(
        &file,
        gguf_of_fixture(BlockFormat::Q8_0, BlockFormat::Q8_0, false),
    )
    .unwrap();
    let empty = dir.join("none");
    let err = import(&file, None, &empty, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("--tokenizer"), "{err}");
    assert!(!empty.exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// A one-layer Llama 256 wide (2 heads of 128) as GGUF, with the fixture's vocabulary size;
/// the q, k, gate and down projections as random K-quant super-blocks (`kquant`) or as F32
/// holding what those blocks dequantize to; the rest F32.
fn kquant_gguf(kquant: bool) -> Vec<u8> {
    use llmjp_weights::kquant::{dequantize, KQuant};
    let (hidden, vocab) = (256usize, 512usize);
    let mut w = Writer::default();
    w.meta("general.architecture", 8, &string("llama"));
    for (key, value) in [
        ("llama.block_count", 1),
        ("llama.embedding_length", hidden),
        ("llama.feed_forward_length", hidden),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
        ("llama.vocab_size", vocab),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        u32_meta(&mut w, key, value);
    }
    let mut next = llmjp_testdata::uniform(11);
    let mut f32s = |n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| (next() * scale).to_le_bytes())
            .collect()
    };
    let (h, v) = (hidden as u64, vocab as u64);
    w.tensor("token_embd.weight", &[h, v], 0, &f32s(hidden * vocab, 1.0));
    w.tensor("output.weight", &[h, v], 0, &f32s(hidden * vocab, 0.1));
    for norm in ["output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"] {
        w.tensor(&format!("{norm}.weight"), &[h], 0, &f32s(hidden, 1.0));
    }
    for (i, part) in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("blk.0.{part}.weight");
        let kind = match part {
            "attn_q" | "ffn_gate" => Some(12),
            "attn_k" => Some(13),
            "ffn_down" => Some(14),
            _ => None,
        };
        match kind {
            Some(kind) => {
                let blocks = llmjp_testdata::gguf::kquant_blocks(kind, h * h, 20 + i as u64);
                if kquant {
                    w.tensor(&name, &[h, h], kind, &blocks);
                } else {
                    // The same values as F32.
                    let format = KQuant::from_ggml_type(kind).unwrap();
                    let values = dequantize(format, &blocks).unwrap();
                    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                    w.tensor(&name, &[h, h], 0, &bytes);
                }
            }
            None => {
                w.tensor(&name, &[h, h], 0, &f32s(hidden * hidden, 0.1));
            }
        }
    }
    w.bytes()
}

/// Logits of the model in `dir` with bf16 weights on the CPU kernels of `isa`.
fn cpu_logits(dir: &Path, isa: llmjp_model::cpu::Isa) -> Vec<f32> {
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(dir).unwrap();
    let ops = std::sync::Arc::new(llmjp_model::cpu::CpuKernels::with_isa(isa));
    let model = CausalLm::<Cpu>::load_with_ops(
        config,
        &checkpoint,
        ComputeDtype::BF16,
        &Default::default(),
        ops,
        &mut |_, _| {},
    )
    .unwrap();
    forward(&model)
}

#[test]
fn k_quant_gguf_runs_with_the_numbers_of_its_dequantized_values() {
    use llmjp_model::cpu::Isa;
    let fixture = llmjp_testdata::fixture_dir(FIXTURE);
    let dir = temp("kquant");
    let mut imported = Vec::new();
    for kquant in [true, false] {
        let file = dir.join(format!("model-{kquant}.gguf"));
        fs::write(&file, kquant_gguf(kquant)).unwrap();
        let out = dir.join(format!("imported-{kquant}"));
        import(&file, Some(&fixture), &out, &mut |_, _| {}).unwrap();
        let checkpoint = Checkpoint::open(&out).unwrap();
        let stored = checkpoint.kquant("model.layers.0.mlp.down_proj.weight");
        assert_eq!(stored.is_some(), kquant);
        imported.push(out);
    }
    let (k, float) = (&imported[0], &imported[1]);
    // The float path (any backend, f32) reads the super-blocks' exact values.
    let f32_logits = logits(k, ComputeDtype::F32.into());
    assert!(f32_logits.iter().all(|x| x.is_finite()));
    assert_eq!(f32_logits, logits(float, ComputeDtype::F32.into()));
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_supported()) {
        let (ours, reference) = (cpu_logits(k, isa), cpu_logits(float, isa));
        if isa < Isa::Avx2 {
            // Portable: bf16 matrices of the dequantized values.
            assert_eq!(ours, reference, "{isa}");
        } else {
            // The K-quant kernels: activations in 8 bits per super-block of 256, as
            // llama.cpp's Q8_K (the kernels themselves are exact on those: unit tests).
            // Random super-blocks have large minimums, which cancel: 2 % of the largest
            // logit here.
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = llmjp_testdata::max_abs_diff(&ours, &reference);
            eprintln!("{isa}: max abs logit error {err} (logits up to {scale})");
            assert!(err <= 0.05 * scale, "{isa}: {err} vs {scale}");
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}
