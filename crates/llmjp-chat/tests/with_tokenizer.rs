//! The chat template of the real llm-jp-3 tokenizer folder, rendered and encoded.

use llmjp_chat::{encode_chat, ChatError, ChatTemplate, Message};
use llmjp_tokenizer::Tokenizer;

/// From ../shared/llm-jp-3-tokenizer/README.md.
const SEED_IDS: [u32; 38] = [
    1, 46337, 78440, 60970, 29083, 76016, 56252, 70725, 78439, 75658, 29083, 76811, 29179, 72952,
    29131, 70147, 29083, 71559, 56856, 28949, 18, 18, 27338, 49615, 28752, 18, 75151, 75849, 66692,
    78455, 99244, 18, 18, 27338, 279, 70147, 28752, 18,
];

fn seed_messages() -> [Message; 2] {
    [
        Message::system("以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"),
        Message::user("自然言語処理とは何か"),
    ]
}

#[test]
fn seed_conversation_encodes_to_the_published_ids() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let template = ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    let (prompt, ids) = encode_chat(&tokenizer, &template, &seed_messages(), true).unwrap();
    assert_eq!(
        prompt,
        "<s>以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n"
    );
    assert_eq!(ids, SEED_IDS);
    // Exactly one BOS, at the start.
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1);
    // Encoding the rendered prompt with special tokens would double the BOS: encode_chat
    // does not.
    assert_eq!(tokenizer.encode(&prompt, true).unwrap()[..2], [1, 1]);
}

#[test]
fn folder_template_equals_the_built_in_one() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let from_folder = ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    let messages = [
        Message::user("質問"),
        Message::assistant("答え"),
        Message::user("次"),
    ];
    for add in [true, false] {
        assert_eq!(
            from_folder.render(&messages, add).unwrap(),
            ChatTemplate::llm_jp().render(&messages, add).unwrap()
        );
    }
    assert_eq!(from_folder.special_tokens()["pad_token"], "<PAD|LLM-jp>");
}

#[test]
fn a_folder_without_template_gets_the_built_in_one() {
    let Some(dir) = llmjp_testdata::tokenizer_dir() else {
        return;
    };
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert!(tokenizer.config().chat_template.is_none());
    let template = ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    // No special tokens in the configuration: bos_token renders empty, as in transformers.
    assert!(template
        .render(&seed_messages(), true)
        .unwrap()
        .starts_with("以下は"));
    let err = ChatTemplate::from_tokenizer_named(&tokenizer, "tool_use").unwrap_err();
    assert!(matches!(err, ChatError::NoTemplate { .. }));
}
