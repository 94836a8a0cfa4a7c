"""GGML's reference K-quant quantizers (what `llama-quantize` runs without an importance
matrix) on fixed inputs, for the byte-for-byte test of `llmjp_weights::kquant::quantize`.

Writes crates/llmjp-weights/tests/golden/kquant_quantize.json: the inputs (f32 bit patterns)
and the Q4_K, Q5_K and Q6_K super-blocks GGML writes for them (hex).
Needs a llama.cpp build (see /work/shared/notes/llama-cpp): 
Run: python3 xtask/golden/kquant_quantize_golden.py LLAMA_CPP_DIR
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import ROOT, write_json

src = Path(sys.argv[1]).resolve()
lib = src / "build" / "bin"
rng = np.random.default_rng(7)
blocks = [
    rng.normal(size=256) * 0.02,  # weight-like
    rng.normal(size=256),
    rng.uniform(-1, 1, size=256) * 1e-3,
    np.zeros(256),  # all zero
    np.full(256, 0.25),  # constant positive
    -np.abs(rng.normal(size=256)),  # all negative
    np.where(np.arange(256) == 17, 50.0, rng.normal(size=256) * 0.01),  # one outlier
    rng.standard_t(3, size=256) * 0.05,  # heavy tails
    np.concatenate([np.zeros(128), rng.normal(size=128)]),  # half zero
    rng.normal(size=256) * 1e-8,  # tiny
]
x = np.concatenate(blocks).astype(np.float32)
with tempfile.TemporaryDirectory() as tmp:
    exe = Path(tmp) / "kquant_quantize"
    subprocess.run(["cc", "-O2", str(Path(__file__).with_name("kquant_quantize.c")), "-o", str(exe),
                    f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}"], check=True)
    out = subprocess.run([str(exe), str(len(x))], input=x.tobytes(), capture_output=True, check=True).stdout
nb = len(x) // 256
sizes = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
result, at = {"inputs": [int(v) for v in x.view(np.uint32)], "formats": {}}, 0
for name, size in sizes.items():
    result["formats"][name] = out[at : at + nb * size].hex()
    at += nb * size
assert at == len(out)
write_json(ROOT / "crates/llmjp-weights/tests/golden/kquant_quantize.json", result)
