"""Shared helpers of the golden-data generators (run through `cargo xtask golden`)."""
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tokenizer_dir() -> Path:
    default = ROOT.parent / "shared" / "llm-jp-3-tokenizer"
    return Path(os.environ.get("LLMJP_TOKENIZER_DIR", default))


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")
