//! The tokenizer a GGUF file carries, read back as Hugging Face files, against llm-jp's own
//! tokenizer folder: a GGUF written the way llama.cpp's converter stores llm-jp's vocabulary
//! (pieces, scores, token types, special ids, the chat template) gives the same ids, the
//! same decoded text and the same chat prompts. Inconsistent vocabularies are typed errors.

use std::path::{Path, PathBuf};

use llmjp::{ChatTemplate, Message, Tokenizer};
use llmjp_testdata::gguf::{string, Writer};
use llmjp_weights::gguf::tokenizer::TokenizerFiles;
use llmjp_weights::gguf::Gguf;
use serde_json::Value;

/// GGUF value types.
const I32: u32 = 5;
const F32: u32 = 6;
const BOOL: u32 = 7;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U32: u32 = 4;
/// The converter pads the vocabulary to the model's 99,584 rows with unused pieces.
const MODEL_VOCAB: usize = 99_584;

fn array(kind: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = kind.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    for item in items {
        out.extend(item);
    }
    out
}

/// llm-jp's vocabulary as llama.cpp's converter writes it (`tokenizer.ggml.*`).
fn gguf_of(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<String>, &mut Vec<f32>, &mut Vec<i32>),
) -> Vec<u8> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let mut pieces: Vec<String> = vec![];
    let mut scores: Vec<f32> = vec![];
    for entry in json["model"]["vocab"].as_array().unwrap() {
        pieces.push(entry[0].as_str().unwrap().to_string());
        scores.push(entry[1].as_f64().unwrap() as f32);
    }
    let special: Vec<u64> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let mut types: Vec<i32> = (0..pieces.len())
        .map(|i| {
            let byte = pieces[i].len() == 6 && pieces[i].starts_with("<0x");
            match i {
                0 => 2,
                _ if special.contains(&(i as u64)) => 3,
                _ if byte => 6,
                _ => 1,
            }
        })
        .collect();
    for i in pieces.len()..MODEL_VOCAB {
        pieces.push(format!("[PAD{i}]"));
        scores.push(-1000.0);
        types.push(5);
    }
    edit(&mut pieces, &mut scores, &mut types);
    let mut w = Writer::default();
    let u32_meta = |w: &mut Writer, key: &str, v: u32| {
        w.meta(key, U32, &v.to_le_bytes());
    };
    w.meta("general.architecture", STRING, &string("llama"));
    w.meta("tokenizer.ggml.model", STRING, &string("llama"));
    let items: Vec<Vec<u8>> = pieces.iter().map(|p| string(p)).collect();
    w.meta("tokenizer.ggml.tokens", ARRAY, &array(STRING, &items));
    let items: Vec<Vec<u8>> = scores.iter().map(|s| s.to_le_bytes().to_vec()).collect();
    w.meta("tokenizer.ggml.scores", ARRAY, &array(F32, &items));
    let items: Vec<Vec<u8>> = types.iter().map(|t| t.to_le_bytes().to_vec()).collect();
    w.meta("tokenizer.ggml.token_type", ARRAY, &array(I32, &items));
    u32_meta(&mut w, "tokenizer.ggml.bos_token_id", 1);
    u32_meta(&mut w, "tokenizer.ggml.eos_token_id", 2);
    u32_meta(&mut w, "tokenizer.ggml.unknown_token_id", 0);
    u32_meta(&mut w, "tokenizer.ggml.padding_token_id", 4);
    w.meta("tokenizer.ggml.add_bos_token", BOOL, &[1]);
    w.meta("tokenizer.ggml.add_eos_token", BOOL, &[0]);
    let template = config["chat_template"].as_str().unwrap();
    w.meta("tokenizer.chat_template", STRING, &string(template));
    w.bytes()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llmjp-gguf-tok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_of(bytes: &[u8]) -> llmjp_weights::Result<Option<TokenizerFiles>> {
    let gguf = Gguf::parse(bytes, Path::new("test.gguf"))?;
    TokenizerFiles::of(&gguf)
}

const TEXTS: [&str; 12] = [
    "自然言語処理とは何か",
    "Hello, world!  Two  spaces and a tab\there.",
    " leading space and trailing space ",
    "改行\nのある\n\n文章です。",
    "\n先頭の改行",
    "絵文字 🦀🍣 と 記号 ①②③ ｶﾀｶﾅ",
    "数字 1234567890 と English words mixed with 日本語",
    "<s>は特殊トークン、</s>も",
    "LLM-jpは国立情報学研究所が中心となって開発している大規模言語モデルです。",
    "",
    "a",
    "   ",
];

#[test]
fn a_gguf_tokenizer_encodes_decodes_and_chats_as_the_original() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        eprintln!("skipping: no tokenizer folder (LLMJP_TOKENIZER_DIR)");
        return;
    };
    let original = Tokenizer::from_dir(&dir).unwrap();
    let out = scratch("ok");
    let files = files_of(&gguf_of(&dir, |_, _, _| {})).unwrap().unwrap();
    files.write(&out).unwrap();
    let ours = Tokenizer::from_dir(&out).unwrap();
    for text in TEXTS {
        for special in [false, true] {
            let expected = original.encode(text, special).unwrap();
            assert_eq!(ours.encode(text, special).unwrap(), expected, "{text:?}");
            for skip in [false, true] {
                assert_eq!(
                    ours.decode(&expected, skip).unwrap(),
                    original.decode(&expected, skip).unwrap(),
                    "{text:?}"
                );
            }
        }
    }
    let messages = [
        Message::system("あなたは誠実なアシスタントです。"),
        Message::user("自然言語処理とは何か"),
    ];
    let render = |t: &Tokenizer| {
        let template = ChatTemplate::from_tokenizer(t).unwrap();
        let prompt = template.render(&messages, true).unwrap();
        let ids = t.encode(&prompt, false).unwrap();
        (prompt, ids)
    };
    assert_eq!(render(&ours), render(&original));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inconsistent_vocabularies_are_typed_errors() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        eprintln!("skipping: no tokenizer folder (LLMJP_TOKENIZER_DIR)");
        return;
    };
    // Fewer scores than tokens.
    let bytes = gguf_of(&dir, |_, scores, _| {
        scores.pop();
    });
    let err = files_of(&bytes).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.scores"), "{err}");
    // A special id past the vocabulary.
    let bytes = gguf_of(&dir, |pieces, scores, types| {
        pieces.truncate(1);
        scores.truncate(1);
        types.truncate(1);
    });
    let err = files_of(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("bos_token_id") && err.contains("below 1"),
        "{err}"
    );
    // A score that is not a number.
    let bytes = gguf_of(&dir, |_, scores, _| scores[7] = f32::NAN);
    let err = files_of(&bytes).unwrap_err().to_string();
    assert!(err.contains("scores[7]"), "{err}");
    // No tokens at all.
    let bytes = gguf_of(&dir, |pieces, scores, types| {
        pieces.clear();
        scores.clear();
        types.clear();
    });
    let err = files_of(&bytes).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    // Another kind of vocabulary: asks for the folder.
    let mut w = Writer::default();
    w.meta("tokenizer.ggml.model", STRING, &string("gpt2"));
    let err = files_of(&w.bytes()).unwrap_err().to_string();
    assert!(err.contains("--tokenizer"), "{err}");
    // No vocabulary at all: nothing to read.
    let mut w = Writer::default();
    w.meta("general.architecture", STRING, &string("llama"));
    assert!(files_of(&w.bytes()).unwrap().is_none());
}
