//! Token ids equal Python `tokenizers`' on the golden corpus
//! (`xtask/golden/tokenizer_golden.py`).

use llmjp_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    decoded: String,
    decoded_with_special: String,
}

fn golden() -> Golden {
    let text = include_str!("golden/parity.json");
    serde_json::from_str(text).expect("golden file parses")
}

#[test]
fn corpus_is_large_enough() {
    assert!(golden().cases.len() >= 200);
}

#[test]
fn ids_match_python_tokenizers() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let mut failures = Vec::new();
    for case in golden().cases {
        let ids = tokenizer.encode(&case.text, true).unwrap();
        let ids_no_special = tokenizer.encode(&case.text, false).unwrap();
        if ids != case.ids || ids_no_special != case.ids_no_special {
            failures.push(format!(
                "{:?}: ours {ids:?} / {ids_no_special:?}, python {:?} / {:?}",
                case.text, case.ids, case.ids_no_special
            ));
        }
        assert_eq!(tokenizer.decode(&case.ids, true).unwrap(), case.decoded);
        assert_eq!(
            tokenizer.decode(&case.ids, false).unwrap(),
            case.decoded_with_special
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn batch_encode_equals_single_encodes() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let cases = golden().cases;
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tokenizer.encode_batch(&texts, true).unwrap();
    let expected: Vec<Vec<u32>> = cases.into_iter().map(|c| c.ids).collect();
    assert_eq!(batch, expected);
}

#[test]
fn special_tokens_and_vocabulary() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    assert_eq!(tokenizer.vocab_size(), 99_574);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(tokenizer.unk_id(), Some(0));
    assert_eq!(tokenizer.pad_id(), Some(4));
    assert_eq!(tokenizer.config().add_bos_token, Some(true));
    assert_eq!(tokenizer.config().add_eos_token, Some(false));
    assert_eq!(tokenizer.id_to_token(18).as_deref(), Some("<0x0A>"));
    assert_eq!(tokenizer.token_to_id("<0x09>"), Some(17));
    assert_eq!(tokenizer.id_to_token(99_574), None);
    assert!(tokenizer.is_byte_fallback(8 + 0xE3));
    assert!(!tokenizer.is_byte_fallback(1));
    assert!(tokenizer.config().chat_template.is_some());
}

#[test]
fn tokenizer_json_alone_has_no_special_token_config() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.bos_id(), None);
    assert!(tokenizer.config().chat_template.is_none());
    // The post-processor still adds BOS: that lives in tokenizer.json.
    assert_eq!(tokenizer.encode("a", true).unwrap()[0], 1);
}
