//! Errors, bounds and the helpers transformers registers, on small inline templates.

use std::collections::BTreeMap;

use llmjp_chat::{ChatError, ChatTemplate, Message, RenderOptions};
use serde_json::json;

fn template(source: &str) -> Result<ChatTemplate, ChatError> {
    ChatTemplate::new(source, BTreeMap::new())
}

fn render(source: &str, messages: serde_json::Value) -> Result<String, ChatError> {
    template(source)?.render_json(&messages, &RenderOptions::default())
}

fn one_user() -> serde_json::Value {
    json!([{"role": "user", "content": "hi"}])
}

#[test]
fn syntax_errors_are_typed_and_carry_the_message() {
    let err = template("{% for m in messages %}{{ m.content }}").unwrap_err();
    let ChatError::Syntax { message } = &err else {
        panic!("unexpected {err:?}");
    };
    assert!(message.contains("unexpected end of input"), "{message}");
    assert!(matches!(template("{{ ) }}"), Err(ChatError::Syntax { .. })));
}

#[test]
fn raise_exception_is_typed_and_carries_the_message() {
    let err = render("{{ raise_exception('roles must alternate') }}", one_user()).unwrap_err();
    match err {
        ChatError::Raised { message } => assert_eq!(message, "roles must alternate"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn endless_templates_run_out_of_fuel() {
    let source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let err = template(source)
        .unwrap()
        .with_fuel(10_000)
        .render(&[Message::user("x")], false)
        .unwrap_err();
    assert!(
        matches!(err, ChatError::OutOfFuel { fuel: 10_000 }),
        "{err:?}"
    );
    // The default budget stops it too.
    let err = render(source, one_user()).unwrap_err();
    assert!(matches!(err, ChatError::OutOfFuel { .. }), "{err:?}");
}

#[test]
fn deep_recursion_is_an_error() {
    let source = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    let err = render(source, one_user()).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
}

#[test]
fn huge_output_is_an_error() {
    let source = "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}";
    let err = template(source)
        .unwrap()
        .with_max_output_bytes(10_000)
        .render(&[Message::user("x")], false)
        .unwrap_err();
    assert!(
        matches!(err, ChatError::OutputTooLarge { limit: 10_000 }),
        "{err:?}"
    );
}

#[test]
fn undefined_attributes_of_undefined_are_render_errors() {
    let err = render("{{ messages[5].content.upper() }}", one_user()).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    // Printing an undefined value is empty, as in Jinja2.
    assert_eq!(render("[{{ nothing }}]", one_user()).unwrap(), "[]");
}

#[test]
fn messages_must_be_a_non_empty_list_of_objects() {
    assert!(matches!(
        render("x", json!({})),
        Err(ChatError::InvalidInput(_))
    ));
    assert!(matches!(
        render("x", json!([])),
        Err(ChatError::InvalidInput(_))
    ));
    assert!(matches!(
        render("x", json!(["user"])),
        Err(ChatError::InvalidInput(_))
    ));
}

#[test]
fn strftime_now_formats_the_current_date() {
    let year = render("{{ strftime_now('%Y') }}", one_user()).unwrap();
    assert_eq!(year.len(), 4);
    assert!(year.starts_with("20"), "{year}");
    let err = render("{{ strftime_now('%Q') }}", one_user()).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
}

#[test]
fn generation_blocks_render_their_body() {
    let source = "{% for m in messages %}{%- generation -%} <{{ m.content }}> {%- endgeneration -%}{% endfor %}";
    assert_eq!(render(source, one_user()).unwrap(), "<hi>");
}

#[test]
fn python_string_methods_and_loop_controls() {
    let source = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
                  {{ m.content.strip().title() }}|{{ m.content.split(',') | join('+') }};{% endfor %}";
    let messages = json!([
        {"role": "user", "content": " a,b "},
        {"role": "user", "content": "c,d"},
        {"role": "user", "content": "never"},
    ]);
    assert_eq!(render(source, messages).unwrap(), "A,B| a+b ;C,D|c+d;");
}

#[test]
fn tojson_keeps_non_ascii_and_does_not_escape_html() {
    let messages = json!([{"role": "user", "content": "<b>日本</b> & 'q'"}]);
    assert_eq!(
        render("{{ messages[0].content | tojson }}", messages).unwrap(),
        r#""<b>日本</b> & 'q'""#
    );
}

#[test]
fn extra_variables_override_special_tokens() {
    let tokens = BTreeMap::from([("bos_token".to_string(), "<s>".to_string())]);
    let template = ChatTemplate::new("{{ bos_token }}{{ date_string }}", tokens).unwrap();
    let mut options = RenderOptions::default();
    assert_eq!(template.render_json(&one_user(), &options).unwrap(), "<s>");
    options.extra.insert("bos_token".into(), json!("<BOS>"));
    options
        .extra
        .insert("date_string".into(), json!("1 Jan 2026"));
    assert_eq!(
        template.render_json(&one_user(), &options).unwrap(),
        "<BOS>1 Jan 2026"
    );
}

#[test]
fn tools_and_documents_are_none_unless_given() {
    let source = "{{ tools is none }} {{ documents is none }} {{ tools is defined }}";
    assert_eq!(render(source, one_user()).unwrap(), "True True True");
}

#[test]
fn reasoning_fields_are_aliased_as_in_transformers() {
    let messages = json!([{"role": "assistant", "content": "a", "reasoning": "why"}]);
    let source = "{{ messages[0].thinking }}/{{ messages[0].reasoning_content }}";
    assert_eq!(render(source, messages).unwrap(), "why/why");
}
