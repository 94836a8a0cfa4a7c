"""Reference renders from transformers' `apply_chat_template`.

For each template in crates/llmjp-chat/tests/templates/ and each conversation below, writes
crates/llmjp-chat/tests/snapshots/<template>/<case>.txt (the rendered prompt) or .err (the
exception message), and the inputs to crates/llmjp-chat/tests/snapshots/cases.json.
The tokenizer is the real llm-jp-3 one, so bos_token is "<s>" and eos_token "</s>".
Run: python3 xtask/golden/chat_golden.py
"""
import shutil

import jinja2
import transformers
from transformers import AutoTokenizer

from common import ROOT, tokenizer_dir, write_json

CHAT = ROOT / "crates/llmjp-chat/tests"
SYSTEM = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
DATE = "26 Jul 2024"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "指定した都市の現在の天気を返す",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "都市名, e.g. 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}


def m(role, content, **extra):
    return {"role": role, "content": content, **extra}


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    ("seed", [m("system", SYSTEM), m("user", "自然言語処理とは何か")], True),
    ("seed_no_generation_prompt", [m("system", SYSTEM), m("user", "自然言語処理とは何か")], False),
    ("user_only", [m("user", "こんにちは")], True),
    ("user_only_no_generation_prompt", [m("user", "こんにちは")], False),
    ("system_only", [m("system", "You are a helpful assistant.")], True),
    ("system_other_content", [m("system", "あなたは海賊です。"), m("user", "自己紹介して")], True),
    ("two_turns", [m("user", "日本の首都は？"), m("assistant", "東京です。"), m("user", "人口は？")], True),
    (
        "system_two_turns_closed",
        [m("system", SYSTEM), m("user", "1+1は？"), m("assistant", "2です。")],
        False,
    ),
    (
        "three_turns_japanese",
        [
            m("system", SYSTEM),
            m("user", "俳句を一つ作ってください。"),
            m("assistant", "古池や\n蛙飛び込む\n水の音"),
            m("user", "季語は何ですか。"),
            m("assistant", "「蛙」で、春の季語です。"),
            m("user", "ありがとう！"),
        ],
        True,
    ),
    ("empty_user_content", [m("user", "")], True),
    ("whitespace_content", [m("system", "  padded system  \n"), m("user", "  spaced  \n\n")], True),
    ("newlines_and_tabs", [m("user", "\n先頭の改行\n\tタブ\r\nCRLF\n")], True),
    ("special_token_text", [m("user", "<s>は開始、</s>は終了の記号です。")], True),
    ("jinja_syntax_in_content", [m("user", "{{ not_a_variable }} {% if x %}y{% endif %}")], True),
    ("english", [m("user", "What is natural language processing?")], True),
    ("emoji_and_rare_kanji", [m("user", "🍣と𠮷野家と𩸽🙂")], True),
    ("assistant_first", [m("assistant", "何でも聞いてください。"), m("user", "では質問です。")], True),
    ("unknown_role", [m("developer", "secret"), m("user", "hi")], True),
    ("two_system_messages", [m("system", "first"), m("user", "q"), m("system", "second")], True),
    ("user_then_user", [m("user", "一つ目"), m("user", "二つ目")], False),
    ("long_conversation", [m("user" if i % 2 == 0 else "assistant", f"発話{i}") for i in range(12)], True),
    ("empty_conversation", [], True),
    ("stop_marker", [m("user", "first"), m("user", "STOP here"), m("user", "never seen")], True),
    ("tools_user", [m("user", "東京の天気は？")], True, [WEATHER_TOOL]),
    ("tools_system_user", [m("system", "Use tools when useful."), m("user", "大阪の天気を教えて")], True, [WEATHER_TOOL]),
    (
        "tool_call_and_response",
        [
            m("user", "東京の天気は？"),
            m("assistant", "", tool_calls=[call("get_weather", {"city": "東京", "days": 2})]),
            m("tool", '{"temperature": 21.5, "condition": "晴れ"}'),
        ],
        True,
        [WEATHER_TOOL],
    ),
    (
        "two_tool_calls",
        [
            m("user", "東京と大阪の天気は？"),
            m(
                "assistant",
                "",
                tool_calls=[call("get_weather", {"city": "東京"}), call("get_weather", {"city": "大阪"})],
            ),
        ],
        False,
        [WEATHER_TOOL],
    ),
    ("tools_without_user", [m("system", "only system")], True, [WEATHER_TOOL]),
]


def main() -> None:
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    snapshots = CHAT / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    cases = []
    for name, messages, add_generation_prompt, *rest in CASES:
        tools = rest[0] if rest else None
        cases.append({
            "name": name,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "tools": tools,
            "extra": {"date_string": DATE},
        })
    for template_path in sorted((CHAT / "templates").glob("*.jinja")):
        source = template_path.read_text(encoding="utf-8")
        folder = snapshots / template_path.stem
        folder.mkdir(parents=True)
        for case in cases:
            try:
                text = tok.apply_chat_template(
                    case["messages"],
                    tools=case["tools"],
                    chat_template=source,
                    tokenize=False,
                    add_generation_prompt=case["add_generation_prompt"],
                    **case["extra"],
                )
                (folder / f"{case['name']}.txt").write_text(text, encoding="utf-8", newline="")
            except (jinja2.TemplateError, ValueError, TypeError) as e:
                (folder / f"{case['name']}.err").write_text(str(e), encoding="utf-8", newline="")
    write_json(snapshots / "cases.json", {
        "generator": f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}",
        "cases": cases,
    })


if __name__ == "__main__":
    main()
