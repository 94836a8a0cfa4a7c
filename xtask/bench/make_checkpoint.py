"""A random-weight checkpoint with the real llm-jp-3.1-1.8b config, stored bf16 and sharded
as on the Hub, plus the real tokenizer files, for benchmarks (never committed).

Usage: python3 make_checkpoint.py OUT_DIR [CONFIG_JSON] [--layers N] [--device cuda]

The shared folder (configs, tokenizer) is ../shared beside the repository, or
$LLMJP_SHARED_DIR. `--device cuda` draws the weights on a GPU (a 13b shape in seconds).
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LLMJP_SHARED_DIR", ROOT.parent / "shared"))
SHARD_BYTES = 2 * 1024**3


def tensors(config):
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    d = config.get("head_dim", h // heads)
    yield "model.embed_tokens.weight", (v, h)
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (heads * d, h)
        yield f"{p}.self_attn.k_proj.weight", (kv * d, h)
        yield f"{p}.self_attn.v_proj.weight", (kv * d, h)
        yield f"{p}.self_attn.o_proj.weight", (h, heads * d)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def main():
    args = sys.argv[1:]
    layers, device = None, "cpu"
    if "--device" in args:
        at = args.index("--device")
        device = args[at + 1]
        del args[at:at + 2]
    if "--layers" in args:
        at = args.index("--layers")
        layers = int(args[at + 1])
        del args[at:at + 2]
    out = Path(args[0])
    config_path = Path(args[1]) if len(args) > 1 else SHARED / "llm-jp-3-configs/llm-jp-3.1-1.8b.config.json"
    config = json.loads(config_path.read_text())
    if layers:
        config["num_hidden_layers"] = layers
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # Shards are planned from the shapes first, then each is generated and written alone
    # (a 13b-shaped checkpoint does not fit in memory at once).
    plan, current, size = [], [], 0
    for name, shape in tensors(config):
        nbytes = 2 * int(torch.Size(shape).numel())
        if current and size + nbytes > SHARD_BYTES:
            plan.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    plan.append(current)
    weight_map, total = {}, 0
    for k, names in enumerate(plan):
        file = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        shard = {}
        for name, shape in names:
            if name.endswith("norm.weight"):
                t = 1.0 + 0.05 * torch.randn(shape, device=device)
            else:
                t = 0.02 * torch.randn(shape, device=device)
            shard[name] = t.to(torch.bfloat16).cpu()
            weight_map[name] = file
            total += shard[name].numel() * 2
        save_file(shard, str(out / file), metadata={"format": "pt"})
        del shard
    shards = plan
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(SHARED / "llm-jp-3-configs/generation_config.json", out / "generation_config.json")
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copyfile(SHARED / "llm-jp-3-tokenizer" / f, out / f)
    print(f"wrote {out}: {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
