"""Reference token ids from Python `tokenizers` with the real llm-jp-3 tokenizer.

Writes crates/llmjp-tokenizer/tests/golden/parity.json: for each corpus string, the ids with
and without special tokens and the decoded text. Run: python3 xtask/golden/tokenizer_golden.py
"""
import random

import tokenizers
from tokenizers import Tokenizer

from common import ROOT, tokenizer_dir, write_json

HANDWRITTEN = [
    "",
    " ",
    "  ",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "\n",
    "\nnewline at the start",
    "\n\nTwo newlines first",
    "newline at the end\n",
    "\ttab first",
    "a\tb\tc",
    "windows\r\nline\r\nendings\r\n",
    "\r\n",
    "<s>",
    "</s>",
    "<s>自然言語処理</s>",
    "text with <s> inside and </s> too",
    "<unk><MASK|LLM-jp><PAD|LLM-jp><CLS|LLM-jp><SEP|LLM-jp><EOD|LLM-jp>",
    "<s><s>double bos",
    "自然言語処理とは何か",
    "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
    "\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n",
    "吾輩は猫である。名前はまだ無い。",
    "東京都千代田区一ツ橋二丁目1番2号",
    "カタカナとひらがなと漢字が混ざった文章です。",
    "ｶﾀｶﾅ半角とＡＢＣ全角英字と１２３全角数字",
    "令和8年11月26日（木）午後3時",
    "「かぎかっこ」『二重かぎかっこ』【隅付き括弧】",
    "𠮷野家の𩸽と𠀋と𡈽",
    "鬱蒼とした森で躑躅と薔薇が咲く",
    "彁妛挧暃椦槞蟐袮閠駲",
    "龘靐齉麤",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!",
    "Natural language processing (NLP) is a subfield of linguistics.",
    "It's 5 o'clock; don't you think?",
    "UPPERCASE lowercase MiXeD",
    "e-mail: someone@example.com, url: https://llm-jp.nii.ac.jp/en/",
    "def f(x):\n    return x * 2\n",
    "fn main() {\n\tprintln!(\"hello\");\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] + c[i]; }",
    "SELECT * FROM users WHERE id = 42;",
    "<html><body><p>Hello</p></body></html>",
    '{"key": "value", "list": [1, 2, 3]}',
    "$ cargo build --release && ./target/release/llmjp",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "🙂😀🎉👍🏽👨‍👩‍👧‍👦🇯🇵",
    "emoji in text 🍣 and 🍜 together",
    "∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫ f(x) dx",
    "Ελληνικά, Русский, العربية, हिन्दी, 한국어, ไทย",
    "Ünïcödé àccents çà et là",
    "ﬁ ligature and ｆｕｌｌｗｉｄｔｈ",
    "zero\u200bwidth\u200cjoiner\u200d",
    "combining e\u0301 and a\u0300",
    "\u3000全角スペース\u3000",
    "1234567890",
    "3.14159265358979323846",
    "1,000,000円",
    "$100.00 and €50 and ¥1000",
    "......",
    "!!!???",
    "------",
    "________",
    "a",
    "あ",
    "ア",
    "亜",
    "A",
    "▁",
    "▁▁already underscores▁",
    "mixed 日本語 and English 文章",
    "null\u0000byte",
    "bell\u0007char",
    "\u007fdel",
    "\ufeffBOM at start",
    "\ufffd replacement char",
    "line1\nline2\nline3",
    "    indented code",
    "\n    \n",
    " \n \n ",
    "end with tab\t",
    "末尾に改行\n\n",
]

JAPANESE_WORDS = "自然 言語 処理 機械 学習 大規模 モデル 東京 大学 研究 開発 日本語 文章 生成 翻訳 質問 応答 要約 データ 計算".split()
ENGLISH_WORDS = "the model language large data training token inference speed memory fast rust burn".split()
RARE = "𠮷𩸽𠀋𡈽彁妛挧暃椦槞蟐龘靐齉麤鱻驫"
EMOJI = "🙂😀🎉👍🍣🍜🗻🎌"
SEPARATORS = [" ", "  ", "\n", "\t", "、", "。", " \n", "\r\n", ""]


def generated(rng: random.Random, count: int) -> list[str]:
    out = []
    pools = [JAPANESE_WORDS, ENGLISH_WORDS, list(RARE), list(EMOJI), ["<s>", "</s>", "<unk>"]]
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choices(pools, weights=[6, 5, 2, 2, 1])[0]
            parts.append(rng.choice(pool))
            parts.append(rng.choice(SEPARATORS))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = rng.choice([" ", "\n", "  ", "\t"]) + text
        out.append(text)
    return out


def main() -> None:
    path = tokenizer_dir() / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    corpus = HANDWRITTEN + generated(random.Random(20261126), 160)
    cases = []
    for text in corpus:
        with_special = tok.encode(text, add_special_tokens=True).ids
        without = tok.encode(text, add_special_tokens=False).ids
        cases.append({
            "text": text,
            "ids": with_special,
            "ids_no_special": without,
            "decoded": tok.decode(with_special, skip_special_tokens=True),
            "decoded_with_special": tok.decode(with_special, skip_special_tokens=False),
        })
    write_json(
        ROOT / "crates/llmjp-tokenizer/tests/golden/parity.json",
        {"generator": f"tokenizers {tokenizers.__version__}", "cases": cases},
    )


if __name__ == "__main__":
    main()
