//! Bad model folders give typed errors that name the file and the problem.

use std::fs;
use std::path::{Path, PathBuf};

use llmjp_tokenizer::{Tokenizer, TokenizerConfig, TokenizerError};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llmjp-tok-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A folder with the real tokenizer.json and the given tokenizer_config.json text.
fn folder_with_config(name: &str, config: &str) -> Option<TempDir> {
    let real = llmjp_testdata::tokenizer_dir()?;
    let dir = TempDir::new(name);
    fs::copy(real.join("tokenizer.json"), dir.0.join("tokenizer.json")).unwrap();
    fs::write(dir.0.join("tokenizer_config.json"), config).unwrap();
    Some(dir)
}

#[test]
fn missing_tokenizer_json() {
    let dir = TempDir::new("missing");
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(matches!(&err, TokenizerError::NotFound { path } if path.ends_with("tokenizer.json")));
    assert!(err.to_string().contains("tokenizer.json: file not found"));
}

#[test]
fn invalid_json_in_tokenizer_json() {
    let dir = TempDir::new("badjson");
    fs::write(dir.0.join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json: invalid JSON"));
}

#[test]
fn json_that_is_not_a_tokenizer() {
    let dir = TempDir::new("notatokenizer");
    fs::write(dir.0.join("tokenizer.json"), r#"{"model": 3}"#).unwrap();
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(
        matches!(err, TokenizerError::InvalidTokenizer { .. }),
        "{err}"
    );
}

#[test]
fn invalid_json_in_tokenizer_config() {
    let Some(dir) = folder_with_config("badconfig", "{\"bos_token\": ") else {
        return;
    };
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Json { path, .. } if path.ends_with("tokenizer_config.json")),
        "{err}"
    );
}

#[test]
fn special_token_of_the_wrong_type() {
    let Some(dir) = folder_with_config("wrongtype", r#"{"eos_token": 2}"#) else {
        return;
    };
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
}

#[test]
fn special_token_not_in_vocabulary() {
    let config = r#"{"bos_token": "<s>", "eos_token": {"content": "<|endoftext|>"}}"#;
    let Some(dir) = folder_with_config("unknowntoken", config) else {
        return;
    };
    let err = Tokenizer::from_dir(&dir.0).unwrap_err();
    match &err {
        TokenizerError::UnknownToken { path, field, token } => {
            assert!(path.ends_with("tokenizer_config.json"));
            assert_eq!(field, "eos_token");
            assert_eq!(token, "<|endoftext|>");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("not in the vocabulary"));
}

#[test]
fn config_parses_named_templates_and_added_token_objects() {
    let text = r#"{
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "pad_token": null,
        "add_bos_token": true,
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}"},
            {"name": "tool_use", "template": "tools"}
        ]
    }"#;
    let config = TokenizerConfig::from_json_str(text, Path::new("x.json")).unwrap();
    assert_eq!(config.token("bos_token"), Some("<s>"));
    assert_eq!(config.token("eos_token"), Some("</s>"));
    assert_eq!(config.token("pad_token"), None);
    assert_eq!(config.add_bos_token, Some(true));
    let templates = config.chat_template.unwrap();
    assert_eq!(templates.get(None), Some("{{ bos_token }}"));
    assert_eq!(templates.get(Some("tool_use")), Some("tools"));
    assert_eq!(templates.get(Some("missing")), None);
}

#[test]
fn chat_template_jinja_file_takes_precedence() {
    let Some(dir) = folder_with_config("jinjafile", r#"{"chat_template": "from config"}"#) else {
        return;
    };
    fs::write(dir.0.join("chat_template.jinja"), "from file").unwrap();
    let tokenizer = Tokenizer::from_dir(&dir.0).unwrap();
    let template = tokenizer.config().chat_template.as_ref().unwrap();
    assert_eq!(template.get(None), Some("from file"));
}
