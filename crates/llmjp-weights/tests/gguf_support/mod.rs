//! A tiny Llama model as a GGUF file (all F32, tied embeddings, one layer), for the import
//! and cache tests.

#![allow(dead_code)]

use llmjp_testdata::gguf::{kquant_blocks, string, Writer};

pub const VOCAB: usize = 32;
pub const HIDDEN: u64 = 32;

/// Random f32 values, as bytes.
pub fn values(n: u64, seed: u64) -> Vec<u8> {
    let mut next = llmjp_testdata::uniform(seed);
    (0..n).flat_map(|_| next().to_le_bytes()).collect()
}

/// A GGUF array of strings.
pub fn strings(items: &[String]) -> Vec<u8> {
    let mut out = 8u32.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    for item in items {
        out.extend(string(item));
    }
    out
}

/// The metadata of the tiny model, with an embedded tokenizer of `tokens` pieces.
pub fn metadata(layers: u32, tokens: usize) -> Writer {
    metadata_sized(layers, tokens, HIDDEN as u32, 32)
}

/// [`metadata`] of a model `hidden` wide with an MLP of `ffn`.
pub fn metadata_sized(layers: u32, tokens: usize, hidden: u32, ffn: u32) -> Writer {
    let mut w = Writer::default();
    w.meta("general.architecture", 8, &string("llama"));
    for (key, value) in [
        ("llama.vocab_size", VOCAB as u32),
        ("llama.context_length", 64),
        ("llama.embedding_length", hidden),
        ("llama.block_count", layers),
        ("llama.feed_forward_length", ffn),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        w.meta(key, 4, &value.to_le_bytes());
    }
    w.meta("tokenizer.ggml.model", 8, &string("llama"));
    let pieces: Vec<String> = (0..tokens)
        .map(|i| match i {
            0 => "<unk>".into(),
            1 => "<s>".into(),
            2 => "</s>".into(),
            i => format!("t{i}"),
        })
        .collect();
    w.meta("tokenizer.ggml.tokens", 9, &strings(&pieces));
    w
}

/// Adds the tensors of `layers` layers (values from `seed`).
pub fn tensors(w: &mut Writer, layers: u32, seed: u64) {
    let h = HIDDEN;
    w.tensor(
        "token_embd.weight",
        &[h, VOCAB as u64],
        0,
        &values(h * VOCAB as u64, seed),
    );
    w.tensor("output_norm.weight", &[h], 0, &values(h, seed + 1));
    for layer in 0..layers {
        let seed = seed + 10 * (u64::from(layer) + 1);
        for (i, part) in ["attn_norm", "ffn_norm"].iter().enumerate() {
            w.tensor(
                &format!("blk.{layer}.{part}.weight"),
                &[h],
                0,
                &values(h, seed + i as u64),
            );
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
        .iter()
        .enumerate()
        {
            let name = format!("blk.{layer}.{part}.weight");
            w.tensor(&name, &[h, h], 0, &values(h * h, seed + 2 + i as u64));
        }
    }
}

/// The whole tiny model: one layer, its tokenizer of [`VOCAB`] pieces, values from `seed`.
pub fn model(seed: u64) -> Vec<u8> {
    let mut w = metadata(1, VOCAB);
    tensors(&mut w, 1, seed);
    w.bytes()
}

/// A fresh temporary folder.
pub fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("llmjp-weights-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A K-quant tensor of [`kquant_model`]: its GGUF name, GGML type and bytes.
pub struct KQuantTensor {
    pub name: String,
    pub kind: u32,
    pub bytes: Vec<u8>,
}

/// A one-layer model 256 wide (head dim 128) whose q, k and down projections are Q4_K,
/// Q5_K and Q6_K; the rest F32. Returns the file and the three tensors' GGUF bytes.
pub fn kquant_model(seed: u64) -> (Vec<u8>, Vec<KQuantTensor>) {
    let h = 256u64;
    let mut w = metadata_sized(1, VOCAB, h as u32, h as u32);
    w.tensor(
        "token_embd.weight",
        &[h, VOCAB as u64],
        0,
        &values(h * VOCAB as u64, seed),
    );
    w.tensor("output_norm.weight", &[h], 0, &values(h, seed + 1));
    for part in ["attn_norm", "ffn_norm"] {
        w.tensor(
            &format!("blk.0.{part}.weight"),
            &[h],
            0,
            &values(h, seed + 2),
        );
    }
    let quantized: Vec<KQuantTensor> = [("attn_q", 12u32), ("attn_k", 13), ("ffn_down", 14)]
        .into_iter()
        .map(|(part, kind)| KQuantTensor {
            name: format!("blk.0.{part}.weight"),
            kind,
            bytes: kquant_blocks(kind, h * h, seed + kind as u64),
        })
        .collect();
    for t in &quantized {
        w.tensor(&t.name, &[h, h], t.kind, &t.bytes);
    }
    for part in ["attn_v", "attn_output", "ffn_gate", "ffn_up"] {
        w.tensor(
            &format!("blk.0.{part}.weight"),
            &[h, h],
            0,
            &values(h * h, seed + 3),
        );
    }
    (w.bytes(), quantized)
}
