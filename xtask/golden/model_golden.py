"""Tiny random llm-jp-shaped checkpoints and transformers' outputs on them.

For each fixture below, writes crates/llmjp-testdata/fixtures/<name>/ with config.json
(Hub style or transformers 5 style), model.safetensors (or shards and an index) in the
storage dtype, named as on the Hub (Mixtral experts as block_sparse_moe.experts.E.w1/w2/w3),
and reference.json: for several prompts, transformers' last-position logits (f32) and a
32-token greedy continuation. The checkpoint is reloaded with from_pretrained before the
references are computed, so they come from transformers reading exactly these files.
Run: python3 xtask/golden/model_golden.py
"""
import json
import zlib
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, MixtralConfig

from common import ROOT, write_json

FIXTURES = ROOT / "crates/llmjp-testdata/fixtures"
GREEDY_TOKENS = 32

COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
    attention_bias=False,
)

SPECS = [
    dict(name="llama-mha-bf16", arch="llama", dtype=torch.bfloat16, style="hub", shards=1,
         config=dict(num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=False)),
    dict(name="llama-gqa-f32-sharded", arch="llama", dtype=torch.float32, style="hub", shards=3,
         config=dict(num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True)),
    dict(name="mixtral-top2-bf16", arch="mixtral", dtype=torch.bfloat16, style="hub", shards=1,
         config=dict(num_key_value_heads=4, rope_theta=10000.0, num_local_experts=8,
                     num_experts_per_tok=2, intermediate_size=96, tie_word_embeddings=False)),
    dict(name="mixtral-top1-gqa-f16-t5", arch="mixtral", dtype=torch.float16, style="transformers5",
         shards=2,
         config=dict(num_key_value_heads=2, rope_theta=10000.0, num_local_experts=4,
                     num_experts_per_tok=1, intermediate_size=96, tie_word_embeddings=False)),
]

DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def build_model(spec):
    torch.manual_seed(zlib.crc32(spec["name"].encode()))
    kwargs = {**COMMON, **spec["config"]}
    config = LlamaConfig(**kwargs) if spec["arch"] == "llama" else MixtralConfig(**kwargs)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.08 * torch.randn_like(param))
    return config, model


def hub_state_dict(model, arch, dtype):
    """The model's weights under the names the Hub checkpoints use."""
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.to(dtype).contiguous()
        if arch == "mixtral" and ".mlp." in name:
            prefix = name.split(".mlp.")[0] + ".block_sparse_moe."
            if name.endswith("mlp.gate.weight"):
                out[prefix + "gate.weight"] = tensor
            elif name.endswith("experts.gate_up_proj"):
                inter = tensor.shape[1] // 2
                for e in range(tensor.shape[0]):
                    out[f"{prefix}experts.{e}.w1.weight"] = tensor[e, :inter].contiguous()
                    out[f"{prefix}experts.{e}.w3.weight"] = tensor[e, inter:].contiguous()
            elif name.endswith("experts.down_proj"):
                for e in range(tensor.shape[0]):
                    out[f"{prefix}experts.{e}.w2.weight"] = tensor[e].contiguous()
            else:
                raise ValueError(f"unexpected MoE tensor {name}")
        else:
            out[name] = tensor
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def save_checkpoint(state, folder, shards):
    names = sorted(state)
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def config_json(config, spec):
    arch = "LlamaForCausalLM" if spec["arch"] == "llama" else "MixtralForCausalLM"
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rms_norm_eps", "bos_token_id", "eos_token_id", "hidden_act", "attention_bias",
            "tie_word_embeddings", "initializer_range"]
    if spec["arch"] == "mixtral":
        keys += ["num_local_experts", "num_experts_per_tok", "router_aux_loss_coef"]
    else:
        keys += ["mlp_bias"]
    out = {"architectures": [arch], "model_type": spec["arch"]}
    out.update({k: getattr(config, k) for k in keys})
    theta = spec["config"]["rope_theta"]
    if spec["style"] == "hub":
        out.update(rope_theta=theta, rope_scaling=None, torch_dtype=DTYPE_NAMES[spec["dtype"]],
                   transformers_version="4.43.3")
    else:
        out.update(rope_parameters={"rope_theta": theta, "rope_type": "default"},
                   dtype=DTYPE_NAMES[spec["dtype"]], transformers_version=transformers.__version__)
    return out


def prompts(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in (1, 6, 17, 40)]


def references(model, prompt_list):
    out = []
    generation = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS,
                                  min_new_tokens=0, eos_token_id=None, pad_token_id=0)
    for ids in prompt_list:
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0, -1].float()
            generated = model.generate(input_ids, generation_config=generation,
                                       attention_mask=torch.ones_like(input_ids))
        out.append({
            "ids": ids,
            "last_logits": [float(x) for x in logits],
            "greedy": generated[0, len(ids):].tolist(),
        })
        assert len(out[-1]["greedy"]) == GREEDY_TOKENS
    return out


def chat_fixture():
    """A tiny model with the real llm-jp vocabulary, for end-to-end tests of the pipeline with
    the real tokenizer (not copied here: tests take it from ../shared)."""
    from transformers import AutoTokenizer
    from common import tokenizer_dir

    spec = dict(name="tiny-llmjp", arch="llama", dtype=torch.bfloat16, style="hub", shards=1,
                config=dict(vocab_size=99584, hidden_size=16, intermediate_size=32,
                            num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                            max_position_embeddings=64, rope_theta=10000.0,
                            tie_word_embeddings=False))
    folder = FIXTURES / spec["name"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config, model = build_model(spec)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(4.0)
        model.lm_head.weight.mul_(4.0)
    save_checkpoint(hub_state_dict(model, "llama", spec["dtype"]), folder, 1)
    (folder / "config.json").write_text(json.dumps(config_json(config, spec), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 4}, indent=2) + "\n")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    system = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "自然言語処理とは何か"}]
    chat_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    raw_ids = tok("日本の首都は")["input_ids"]
    cases = []
    for name, ids in [("chat", chat_ids), ("raw", raw_ids)]:
        for penalty in (1.0, 1.5):
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=20,
                                 repetition_penalty=penalty, eos_token_id=2, pad_token_id=4,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            generated = out[0, len(ids):].tolist()
            cases.append({"prompt": name, "repetition_penalty": penalty, "prompt_ids": ids,
                          "generated_ids": generated,
                          "text": tok.decode(generated, skip_special_tokens=True)})
    write_json(folder / "reference.json", {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "compute_dtype": "float32", "messages": messages, "raw_prompt": "日本の首都は",
        "cases": cases,
    })


def main():
    chat_fixture()
    for spec in SPECS:
        folder = FIXTURES / spec["name"]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        config, model = build_model(spec)
        state = hub_state_dict(model, spec["arch"], spec["dtype"])
        save_checkpoint(state, folder, spec["shards"])
        (folder / "config.json").write_text(json.dumps(config_json(config, spec), indent=2) + "\n")
        (folder / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")
        # The references come from transformers reading the files just written.
        reloaded = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="eager").eval()
        for name, param in model.state_dict().items():
            expected = param.to(spec["dtype"]).float()
            assert torch.equal(reloaded.state_dict()[name], expected), name
        write_json(folder / "reference.json", {
            "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "compute_dtype": "float32",
            "prompts": references(reloaded, prompts(config.vocab_size, len(spec["name"]))),
        })


if __name__ == "__main__":
    main()
