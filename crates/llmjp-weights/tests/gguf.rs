//! GGUF headers: every value type and the tensor directory read back; truncated, corrupt and
//! hostile files are `InvalidGguf` errors, never panics or huge allocations.

use llmjp_testdata::gguf::{string, Writer};
use llmjp_weights::gguf::{GgmlType, Gguf, GgufFile, GgufValue};
use llmjp_weights::WeightsError;
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    let mut w = Writer::default();
    let mut tokens = 8u32.to_le_bytes().to_vec(); // array of strings
    tokens.extend(3u64.to_le_bytes());
    for t in ["<unk>", "<s>", "日本"] {
        tokens.extend(string(t));
    }
    let mut scores = 6u32.to_le_bytes().to_vec(); // array of f32
    scores.extend(2u64.to_le_bytes());
    scores.extend(0.5f32.to_le_bytes());
    scores.extend((-1.5f32).to_le_bytes());
    w.meta("general.architecture", 8, &string("llama"))
        .meta("u8", 0, &[7])
        .meta("i8", 1, &[0xff])
        .meta("u16", 2, &513u16.to_le_bytes())
        .meta("i16", 3, &(-2i16).to_le_bytes())
        .meta("llama.block_count", 4, &24u32.to_le_bytes())
        .meta("i32", 5, &(-3i32).to_le_bytes())
        .meta("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
        .meta("bool", 7, &[1])
        .meta("tokenizer.ggml.tokens", 9, &tokens)
        .meta("scores", 9, &scores)
        .meta("u64", 10, &(1u64 << 40).to_le_bytes())
        .meta("i64", 11, &(-4i64).to_le_bytes())
        .meta("f64", 12, &0.25f64.to_le_bytes());
    let f32s: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    w.tensor("output_norm.weight", &[6], 0, &f32s);
    // Two rows of one Q8_0 block each: [in 32, out 2].
    w.tensor("output.weight", &[32, 2], 8, &[3u8; 68]);
    w.tensor("blk.0.ffn_down.weight", &[256, 1], 12, &[]); // a k-quant: type 12
    w.bytes()
}

fn parse(bytes: &[u8]) -> Result<Gguf, WeightsError> {
    Gguf::parse(bytes, "test.gguf".as_ref())
}

fn invalid(bytes: &[u8], needle: &str) {
    match parse(bytes) {
        Err(WeightsError::InvalidGguf { message, .. }) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected an invalid-GGUF error with {needle:?}, got {other:?}"),
    }
}

#[test]
fn reads_every_value_type_and_the_tensor_directory() {
    let bytes = sample();
    let gguf = parse(&bytes).unwrap();
    assert_eq!(gguf.version, 3);
    assert_eq!(
        gguf.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(gguf.get("u8"), Some(&GgufValue::U8(7)));
    assert_eq!(gguf.get("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(gguf.get("u16"), Some(&GgufValue::U16(513)));
    assert_eq!(gguf.get("i16"), Some(&GgufValue::I16(-2)));
    assert_eq!(gguf.get("llama.block_count").unwrap().as_u64(), Some(24));
    assert_eq!(gguf.get("i32").unwrap().as_u64(), None);
    assert_eq!(
        gguf.get("llama.rope.freq_base").unwrap().as_f64(),
        Some(10000.0)
    );
    assert_eq!(gguf.get("bool"), Some(&GgufValue::Bool(true)));
    let tokens = GgufValue::Array(
        ["<unk>", "<s>", "日本"]
            .map(|t| GgufValue::String(t.into()))
            .to_vec(),
    );
    assert_eq!(gguf.get("tokenizer.ggml.tokens"), Some(&tokens));
    assert_eq!(
        gguf.get("scores"),
        Some(&GgufValue::Array(vec![
            GgufValue::F32(0.5),
            GgufValue::F32(-1.5)
        ]))
    );
    assert_eq!(gguf.get("u64").unwrap().as_u64(), Some(1 << 40));
    assert_eq!(gguf.get("i64"), Some(&GgufValue::I64(-4)));
    assert_eq!(gguf.get("f64").unwrap().as_f64(), Some(0.25));

    let norm = gguf.tensor("output_norm.weight").unwrap();
    assert_eq!(
        (norm.shape(), norm.kind, norm.len),
        (vec![6], GgmlType::F32, 24)
    );
    assert_eq!(&gguf.data(&bytes, norm)[4..8], &2f32.to_le_bytes());
    let head = gguf.tensor("output.weight").unwrap();
    assert_eq!(
        (head.shape(), head.kind, head.len),
        (vec![2, 32], GgmlType::Q8_0, 68)
    );
    assert_eq!(head.start % 32, 0);
    let kquant = gguf.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!((kquant.kind, kquant.len), (GgmlType::Other(12), 0));
    assert_eq!(kquant.kind.to_string(), "GGML type 12");

    // The same from a file, mapped.
    let path = std::env::temp_dir().join(format!("llmjp-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        file.data(file.header().tensor("output.weight").unwrap()),
        &[3u8; 68]
    );
    drop(file);
    std::fs::remove_file(&path).unwrap();
    let dir = std::env::temp_dir();
    assert!(matches!(
        GgufFile::open(&dir),
        Err(WeightsError::NotAFile { .. })
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for end in 0..bytes.len() {
        match parse(&bytes[..end]) {
            Err(WeightsError::InvalidGguf { .. }) => {}
            other => panic!("{end} bytes of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn hostile_headers_are_refused_without_allocating() {
    let header = |version: u32, tensors: u64, metadata: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(metadata.to_le_bytes());
        b
    };
    invalid(b"GGML\x03\0\0\0", "no GGUF magic");
    invalid(&header(1, 0, 0), "version 1");
    invalid(&header(3, u64::MAX, 0), "cannot fit");
    invalid(&header(3, 0, 1 << 60), "cannot fit");
    // A string claiming 2^62 bytes.
    let mut b = header(3, 0, 1);
    b.extend((1u64 << 62).to_le_bytes());
    invalid(&b, "cannot fit");
    // An array claiming 2^40 items, an unknown value type, a bad boolean, deep nesting.
    let mut b = header(3, 0, 1);
    b.extend(string("a"));
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    invalid(&b, "cannot fit");
    let mut w = Writer::default();
    w.meta("a", 13, &[0; 8]);
    invalid(&w.bytes(), "unknown metadata type 13");
    let mut w = Writer::default();
    w.meta("a", 7, &[2]);
    invalid(&w.bytes(), "boolean");
    let mut nested = Vec::new();
    for _ in 0..6 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.push(0);
    let mut w = Writer::default();
    w.meta("a", 9, &nested);
    invalid(&w.bytes(), "nested too deep");
    // Too many values in all, each cheap in the file.
    let mut many = 0u32.to_le_bytes().to_vec();
    let count = llmjp_weights::gguf::MAX_METADATA_VALUES + 1;
    many.extend(count.to_le_bytes());
    many.resize(many.len() + count as usize, 0);
    let mut w = Writer::default();
    w.meta("a", 9, &many);
    invalid(&w.bytes(), "metadata values");
    // Tensors: dimensions, overflow, blocks, alignment, bounds.
    let tensor = |dims: &[u64], kind: u32, data: usize| {
        let mut w = Writer::default();
        w.tensor("t", dims, kind, &vec![0; data]);
        w.bytes()
    };
    invalid(&tensor(&[], 0, 0), "0 dimensions");
    invalid(&tensor(&[1, 1, 1, 1, 1], 0, 4), "5 dimensions");
    invalid(&tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0), "overflows");
    invalid(&tensor(&[16, 2], 8, 68), "whole number of Q8_0 blocks");
    invalid(&tensor(&[32, 2], 8, 67), "past the end");
    let mut w = Writer::default();
    w.meta("general.alignment", 4, &3u32.to_le_bytes());
    invalid(&w.bytes(), "power of two");
    let mut bytes = tensor(&[1], 0, 4);
    // The offset field: after the header (24), the name (8 + 1), n_dims (4), one dim (8)
    // and the type (4).
    let offset_at = 24 + 9 + 4 + 8 + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    invalid(&bytes, "not aligned");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any byte changed anywhere: an error or a header whose tensors lie in the file.
    #[test]
    fn corrupt_bytes_never_panic(at in 0usize..400, value in any::<u8>()) {
        let mut bytes = sample();
        let at = at % bytes.len();
        bytes[at] = value;
        if let Ok(gguf) = parse(&bytes) {
            for t in &gguf.tensors {
                prop_assert!(t.start + t.len <= bytes.len());
            }
        }
    }
}

mod llama {
    use llmjp_weights::gguf::llama::{hf_name, hf_row_order, HfTensor};
    use llmjp_weights::{Architecture, ModelConfig, WeightsError};

    use super::{parse, string, Writer};

    /// llama.cpp's `permute` (convert_hf_to_gguf.py) on row indices: the HF row each GGUF
    /// row holds. `reshape(n_head, 2, rows / n_head / 2).swapaxes(1, 2).reshape(rows)`.
    fn llama_cpp_permute(rows: usize, heads: usize) -> Vec<usize> {
        let half = rows / heads / 2;
        let mut out = Vec::new();
        for h in 0..heads {
            for i in 0..half {
                for pair in 0..2 {
                    out.push(h * 2 * half + pair * half + i);
                }
            }
        }
        out
    }

    #[test]
    fn row_order_undoes_llama_cpp_permutation() {
        for (rows, heads) in [(8, 2), (2048, 16), (5120, 40), (1024, 8), (64, 1)] {
            let gguf_holds = llama_cpp_permute(rows, heads);
            let order = hf_row_order(rows, heads);
            // HF row r is GGUF row order[r], which holds HF row r.
            for (r, &g) in order.iter().enumerate() {
                assert_eq!(gguf_holds[g], r, "rows {rows} heads {heads}");
            }
        }
    }

    #[test]
    fn tensor_names_map_to_hugging_face() {
        let dense = |s: &str| Some(HfTensor::Dense(s.into()));
        assert_eq!(
            hf_name("token_embd.weight"),
            dense("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("output.weight"), dense("lm_head.weight"));
        assert_eq!(hf_name("output_norm.weight"), dense("model.norm.weight"));
        assert_eq!(
            hf_name("blk.23.ffn_norm.weight"),
            dense("model.layers.23.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight"),
            dense("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("blk.1.ffn_gate_inp.weight"),
            dense("model.layers.1.block_sparse_moe.gate.weight")
        );
        assert_eq!(
            hf_name("blk.2.ffn_up_exps.weight"),
            Some(HfTensor::Experts {
                layer: 2,
                matrix: "w3"
            })
        );
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.0.nope.weight",
        ] {
            assert_eq!(hf_name(unknown), None, "{unknown}");
        }
    }

    fn u32_meta(w: &mut Writer, key: &str, value: u32) {
        w.meta(key, 4, &value.to_le_bytes());
    }

    /// llama.cpp's metadata for the llm-jp-3.1-1.8b.
    fn metadata_1_8b() -> Writer {
        let mut w = Writer::default();
        w.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 99584),
            ("llama.context_length", 4096),
            ("llama.embedding_length", 2048),
            ("llama.block_count", 24),
            ("llama.feed_forward_length", 7168),
            ("llama.attention.head_count", 16),
            ("llama.attention.head_count_kv", 16),
            ("tokenizer.ggml.bos_token_id", 1),
            ("tokenizer.ggml.eos_token_id", 2),
        ] {
            u32_meta(&mut w, key, value);
        }
        w.meta("llama.rope.freq_base", 6, &10000f32.to_le_bytes());
        w.meta(
            "llama.attention.layer_norm_rms_epsilon",
            6,
            &1e-5f32.to_le_bytes(),
        );
        // An untied head (its data need not be the model's size for the config).
        w.tensor("output.weight", &[32, 1], 8, &[0; 34]);
        w
    }

    #[test]
    fn the_config_matches_the_models_config_json() {
        let gguf = parse(&metadata_1_8b().bytes()).unwrap();
        let config = gguf.model_config().unwrap();
        assert_eq!(config.architecture, Architecture::Llama);
        let expected = llmjp_testdata::configs_dir()
            .map(|d| ModelConfig::from_file(&d.join("llm-jp-3.1-1.8b.config.json")).unwrap());
        if let Some(expected) = expected {
            assert_eq!(config.vocab_size, expected.vocab_size);
            assert_eq!(config.hidden_size, expected.hidden_size);
            assert_eq!(config.intermediate_size, expected.intermediate_size);
            assert_eq!(config.num_hidden_layers, expected.num_hidden_layers);
            assert_eq!(config.num_attention_heads, expected.num_attention_heads);
            assert_eq!(config.num_key_value_heads, expected.num_key_value_heads);
            assert_eq!(config.head_dim, expected.head_dim);
            assert_eq!(
                config.max_position_embeddings,
                expected.max_position_embeddings
            );
            assert_eq!(config.rope_theta, expected.rope_theta);
            assert_eq!(config.tie_word_embeddings, expected.tie_word_embeddings);
            assert!((config.rms_norm_eps - expected.rms_norm_eps).abs() < 1e-9);
            assert_eq!(config.bos_token_id, expected.bos_token_id);
        }
        assert_eq!(config.eos_token_ids, [2]);
    }

    #[test]
    fn mixtures_unsupported_and_bad_metadata() {
        let mut moe = metadata_1_8b();
        u32_meta(&mut moe, "llama.expert_count", 8);
        u32_meta(&mut moe, "llama.expert_used_count", 2);
        let config = parse(&moe.bytes()).unwrap().model_config().unwrap();
        assert_eq!(config.architecture, Architecture::Mixtral);
        assert_eq!(
            (config.num_local_experts, config.num_experts_per_tok),
            (8, 2)
        );

        let mut other = Writer::default();
        other.meta("general.architecture", 8, &string("gpt2"));
        let err = parse(&other.bytes()).unwrap().model_config().unwrap_err();
        assert!(
            matches!(err, WeightsError::UnsupportedArchitecture { .. }),
            "{err}"
        );

        let mut missing = Writer::default();
        missing.meta("general.architecture", 8, &string("llama"));
        u32_meta(&mut missing, "llama.vocab_size", 10);
        let err = parse(&missing.bytes()).unwrap().model_config().unwrap_err();
        assert!(err.to_string().contains("llama.embedding_length"), "{err}");

        let mut huge = Writer::default();
        huge.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 99584),
            ("llama.embedding_length", u32::MAX),
            ("llama.block_count", 24),
            ("llama.feed_forward_length", 7168),
            ("llama.attention.head_count", 16),
        ] {
            u32_meta(&mut huge, key, value);
        }
        let err = parse(&huge.bytes()).unwrap().model_config().unwrap_err();
        assert!(matches!(err, WeightsError::InvalidConfig { .. }), "{err}");

        let mut scaled = metadata_1_8b();
        scaled.meta("llama.rope.scaling.type", 8, &string("yarn"));
        let err = parse(&scaled.bytes()).unwrap().model_config().unwrap_err();
        assert!(matches!(err, WeightsError::InvalidConfig { .. }), "{err}");

        // Without output.weight the head is tied to the embeddings.
        let mut tied = Writer::default();
        tied.meta("general.architecture", 8, &string("llama"));
        for (key, value) in [
            ("llama.vocab_size", 100),
            ("llama.embedding_length", 64),
            ("llama.block_count", 2),
            ("llama.feed_forward_length", 128),
            ("llama.attention.head_count", 4),
        ] {
            u32_meta(&mut tied, key, value);
        }
        let config = parse(&tied.bytes()).unwrap().model_config().unwrap();
        assert!(config.tie_word_embeddings);
        assert_eq!(config.head_dim, 16);
    }
}
