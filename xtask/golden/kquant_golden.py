"""Reference dequantization of llama.cpp's K-quants by gguf-py (`gguf.quants`).

Writes crates/llmjp-weights/tests/golden/kquant.json: for Q4_K, Q5_K and Q6_K, random
super-blocks (every byte random except the f16 scales, drawn from a normal distribution so
that they are finite, one super-block with zero scales and one with negative ones) as hex,
and the values gguf-py dequantizes them to, as f32 bit patterns.
Run: pip install gguf numpy && python3 xtask/golden/kquant_golden.py
"""
import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from common import ROOT, write_json

rng = np.random.default_rng(1234)
# Byte offsets of each format's f16 scales in its super-block.
SCALES = {T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
out = {"gguf_version": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0", "formats": {}}
for qtype, offsets in SCALES.items():
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(6, size), dtype=np.uint8)
    for i in range(len(blocks)):
        for at in offsets:
            d = np.float16(rng.normal() * 0.01)
            if i == 4:
                d = np.float16(0.0)
            if i == 5:
                d = -abs(d)
            blocks[i, at : at + 2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    values = gguf.quants.dequantize(blocks.reshape(-1), qtype).astype(np.float32)
    out["formats"][qtype.name.lower()] = {
        "blocks": [bytes(b).hex() for b in blocks],
        "values": [int(v) for v in values.reshape(-1).view(np.uint32)],
    }
write_json(ROOT / "crates/llmjp-weights/tests/golden/kquant.json", out)
