"""The same measurement as `llmjp bench`, in transformers: load, prefill a synthetic prompt,
decode greedily with the KV cache. Prints one JSON object like `llmjp bench --format json`.

Usage: python3 hf_bench.py MODEL_DIR [--prompt-tokens 128] [--gen-tokens 32] [--dtype bf16|f32]
                          [--device cpu|cuda]
"""
import argparse
import json
import resource
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = "自然言語処理は、人間の言語をコンピュータで扱うための技術です。"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[args.dtype]
    torch.set_num_threads(torch.get_num_threads())

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval().to(args.device)
    sync()
    load_s = time.perf_counter() - start

    # The same synthetic prompt as `llmjp bench`: BOS, then the text's tokens repeated.
    unit = tok(TEXT)["input_ids"]
    ids = [unit[0]]
    while len(ids) < args.prompt_tokens:
        ids += unit[1:]
    ids = torch.tensor([ids[: args.prompt_tokens]], device=args.device)

    with torch.inference_mode():
        # One untimed pass of the same prompt first on a GPU (CUDA context, cuBLAS handles
        # and heuristics), as a warm server would have had.
        if args.device != "cpu":
            model(ids, use_cache=True)
            sync()
        t = time.perf_counter()
        out = model(ids, use_cache=True)
        past = out.past_key_values
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)
        next_id.cpu()
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.gen_tokens - 1):
            out = model(next_id, past_key_values=past, use_cache=True)
            past = out.past_key_values
            next_id = out.logits[:, -1].argmax(-1, keepdim=True)
            next_id.cpu()  # what a sampler on the host reads, as llmjp does each token
        decode_s = time.perf_counter() - t

    print(json.dumps({
        "load_s": load_s,
        "prefill_tok_s": args.prompt_tokens / prefill_s,
        "decode_tok_s": (args.gen_tokens - 1) / decode_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "device": args.device,
    }))


if __name__ == "__main__":
    main()
