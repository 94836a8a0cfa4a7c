#!/usr/bin/env bash
# The GPU check (docs/cuda.md): run on a GPU machine in the repository root, with
# target/gpu-check/ from `cargo xtask gpu-check` beside it. Needs python3 with torch and
# transformers, the NVIDIA driver, NVRTC and CUDA headers; no cargo, no network.
# Makes random-weight 1.8b- and 13b-shaped bf16 checkpoints on the GPU, runs the CUDA
# kernel tests, `llmjp bench` cold and warm, transformers on the same checkpoints, and
# prints one table. Results also go to $OUT (or ./gpu-check-results).
set -uo pipefail
root=$(pwd)
pack=$root/target/gpu-check
out=${OUT:-$root/gpu-check-results}
mkdir -p "$out"
work=/dev/shm/llmjp-gpu-check
mkdir -p "$work"
start=$SECONDS
say() { echo "== $* ($((SECONDS - start)) s)"; }

# Binaries (stripped, xz) and the paths compiled into them (the fixtures of the checkout
# they were built in).
for f in "$pack"/bin/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
built_at=$(cat "$pack/build-root")
if [ ! -e "$built_at" ]; then mkdir -p "$(dirname "$built_at")" && ln -s "$root" "$built_at"; fi
if [ ! -e "$built_at/../shared" ]; then ln -s "$pack/shared" "$built_at/../shared" 2>/dev/null || true; fi
export LLMJP_SHARED_DIR=$pack/shared
export LLMJP_TOKENIZER_DIR=$pack/shared/llm-jp-3-tokenizer
export LLMJP_CONFIGS_DIR=$pack/shared/llm-jp-3-configs
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
llmjp=$pack/bin/llmjp

say "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 - <<'PY' | tee "$out/bandwidth.txt"
import torch, time
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter(); n = 10
for _ in range(n): y.copy_(x)
torch.cuda.synchronize(); s = time.perf_counter() - t
print(f"copy bandwidth (read + write): {2 * n * x.numel() / s / 1e12:.2f} TB/s")
PY

say "kernel tests, cold kernel cache"
export LLMJP_TEST_KERNEL_CACHE=$work/test-cache
rm -rf "$LLMJP_TEST_KERNEL_CACHE"
t=$SECONDS
timeout 180 "$pack/bin/cube-test" --test-threads 1 --nocapture cuda 2>&1 | grep -v "^\s*[0-9]*:\|^\s*at " | tee "$out/tests.txt" | tail -25
echo "kernel tests: rc ${PIPESTATUS[0]}, $((SECONDS - t)) s" | tee -a "$out/tests.txt"

bench() { # name model args... (DTYPE=q8_0 for another dtype than bf16)
    local name=$1 model=$2; shift 2
    say "llmjp bench $name"
    timeout 240 "$llmjp" bench --model "$model" --device cuda --dtype "${DTYPE:-bf16}" --format json "$@" \
        2> >(tail -5 >&2) | tail -1 > "$out/$name.json"
    cat "$out/$name.json"
}
hf() { # name model
    say "transformers $1"
    timeout 200 python3 "$root/xtask/bench/hf_bench.py" "$2" --device cuda --dtype bf16 \
        2> >(tail -3 >&2) | tail -1 > "$out/$1.json"
    cat "$out/$1.json"
}

say "1.8b-shaped checkpoint"
python3 "$root/xtask/bench/make_checkpoint.py" "$work/1.8b" --device cuda
export LLMJP_KERNEL_CACHE=$work/kernel-cache
rm -rf "$LLMJP_KERNEL_CACHE"
bench ours-1.8b-cold "$work/1.8b"
bench ours-1.8b-warm "$work/1.8b"
DTYPE=q8_0 bench ours-1.8b-q8_0 "$work/1.8b"
DTYPE=q4_0 bench ours-1.8b-q4_0 "$work/1.8b"
hf hf-1.8b "$work/1.8b"

say "13b-shaped checkpoint"
rm -rf "$work/1.8b"
python3 "$root/xtask/bench/make_checkpoint.py" "$work/13b" "$LLMJP_CONFIGS_DIR/llm-jp-3.1-13b.config.json" --device cuda
bench ours-13b "$work/13b" --gen-tokens 64
DTYPE=q8_0 bench ours-13b-q8_0 "$work/13b" --gen-tokens 64
hf hf-13b "$work/13b"

say "table"
python3 - "$out" <<'PY' | tee "$out/table.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def load(n):
    try: return json.loads((out / f"{n}.json").read_text())
    except Exception: return None
bw = (out / "bandwidth.txt").read_text().split(":")[-1].split()[0] if (out / "bandwidth.txt").exists() else "?"
print(f"GPU: {(out / 'gpu.txt').read_text().strip()}; copy bandwidth {bw} TB/s\n")
print("| run | load s | first token s | prefill tok/s | decode tok/s |")
print("|---|---|---|---|---|")
for n in ["ours-1.8b-cold", "ours-1.8b-warm", "ours-1.8b-q8_0", "ours-1.8b-q4_0", "hf-1.8b",
          "ours-13b", "ours-13b-q8_0", "hf-13b"]:
    r = load(n)
    if r is None: print(f"| {n} | failed | | | |"); continue
    ttft = r.get("ttft_s", 128 / r["prefill_tok_s"])
    print(f"| {n} | {r['load_s']:.1f} | {ttft:.3f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |")
# Bytes a decode step reads: every weight but the embedding table (one row of it).
for size, bytes_ in [("1.8b", 3.68e9 - 0.41e9), ("13b", 27.4e9 - 1.02e9)]:
    o, h = load(f"ours-{size}-warm" if size == "1.8b" else f"ours-{size}"), load(f"hf-{size}")
    if o and h:
        print(f"\n{size}: decode {o['decode_tok_s'] / h['decode_tok_s']:.2f}x transformers, prefill {o['prefill_tok_s'] / h['prefill_tok_s']:.2f}x", end="")
        try:
            roof = float(bw) * 1e12 / bytes_
            print(f"; decode {o['decode_tok_s'] / roof:.0%} of the roofline ({roof:.0f} tok/s)", end="")
        except ValueError: pass
        print()
for size in ["1.8b", "13b"]:
    o, q = load(f"ours-{size}-warm" if size == "1.8b" else f"ours-{size}"), load(f"ours-{size}-q8_0")
    if o and q:
        print(f"{size}: q8_0 decode {q['decode_tok_s'] / o['decode_tok_s']:.2f}x our bf16")
PY
say "done"
