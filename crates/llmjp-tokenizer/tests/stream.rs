//! Streaming decode: chunks never split a character and concatenate to the one-shot decode.

use std::sync::OnceLock;

use llmjp_tokenizer::Tokenizer;
use proptest::prelude::*;

fn tokenizer() -> Option<&'static Tokenizer> {
    static TOKENIZER: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| llmjp_testdata::tokenizer_dir().map(|d| Tokenizer::from_dir(d).unwrap()))
        .as_ref()
}

/// Streams `ids` and returns the chunks (the last one from `finish`).
fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut decoder = tokenizer.stream_decoder(skip_special);
    let mut chunks: Vec<String> = ids
        .iter()
        .filter_map(|&id| decoder.step(id).unwrap())
        .collect();
    chunks.extend(decoder.finish().unwrap());
    chunks
}

fn check(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<(), TestCaseError> {
    let whole = tokenizer.decode(ids, skip_special).unwrap();
    let chunks = stream(tokenizer, ids, skip_special);
    prop_assert_eq!(chunks.concat(), whole.clone(), "ids {:?}", ids);
    if !whole.contains('\u{FFFD}') {
        for chunk in &chunks {
            prop_assert!(
                !chunk.contains('\u{FFFD}'),
                "chunk {:?} of {:?}",
                chunk,
                ids
            );
        }
    }
    Ok(())
}

/// Ids drawn from the whole vocabulary, with byte-fallback and special ids over-represented
/// so that multi-byte characters and their interruptions are common.
fn id_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..99_574,
        3 => 8u32..264,
        1 => 0u32..8,
        1 => Just(8 + 0x20),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunks_concatenate_to_one_shot_decode(
        ids in prop::collection::vec(id_strategy(), 0..40),
        skip_special in any::<bool>(),
    ) {
        let Some(tokenizer) = tokenizer() else { return Ok(()); };
        check(tokenizer, &ids, skip_special)?;
    }

    #[test]
    fn encoded_text_streams_back_losslessly(text in "\\PC{0,40}") {
        let Some(tokenizer) = tokenizer() else { return Ok(()); };
        let ids = tokenizer.encode(&text, true).unwrap();
        check(tokenizer, &ids, true)?;
    }
}

#[test]
fn byte_fallback_characters_are_released_whole() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    // A rare kanji that the vocabulary spells as UTF-8 bytes.
    let ids = tokenizer.encode("𠮷野家", false).unwrap();
    assert!(ids.iter().any(|&id| tokenizer.is_byte_fallback(id)));
    let chunks = stream(tokenizer, &ids, true);
    assert_eq!(chunks.concat(), "𠮷野家");
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
    assert_eq!(chunks[0], "𠮷野");
}

#[test]
fn a_lone_byte_is_flushed_by_finish() {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let mut decoder = tokenizer.stream_decoder(true);
    assert_eq!(decoder.step(8 + 0xE3).unwrap(), None);
    assert_eq!(decoder.finish().unwrap().as_deref(), Some("\u{FFFD}"));
    assert_eq!(decoder.finish().unwrap(), None);
}
