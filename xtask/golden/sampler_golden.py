"""Reference outputs of transformers' logits processors on random vectors.

Writes crates/llmjp-sampler/tests/golden/processors.json: for random logits and input ids,
the scores after each processor alone and after the chain `generate` builds for sampling
(repetition penalty → temperature → top-k → top-p → min-p). -inf is written as null.
Run: python3 xtask/golden/sampler_golden.py
"""
import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from common import ROOT, write_json


def encode(scores):
    return [None if x == float("-inf") else float(x) for x in scores.tolist()]


def chain(params):
    procs = []
    if params["repetition_penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params["repetition_penalty"]))
    if params["temperature"] != 1.0:
        procs.append(TemperatureLogitsWarper(params["temperature"]))
    if params["top_k"]:
        procs.append(TopKLogitsWarper(params["top_k"]))
    if params["top_p"] < 1.0:
        procs.append(TopPLogitsWarper(params["top_p"]))
    if params["min_p"] is not None:
        procs.append(MinPLogitsWarper(params["min_p"]))
    return LogitsProcessorList(procs)


PARAMS = [
    dict(repetition_penalty=1.05, temperature=0.7, top_k=50, top_p=0.95, min_p=None),
    dict(repetition_penalty=1.3, temperature=1.5, top_k=None, top_p=0.5, min_p=None),
    dict(repetition_penalty=0.8, temperature=0.3, top_k=5, top_p=1.0, min_p=0.1),
    dict(repetition_penalty=1.0, temperature=1.0, top_k=1, top_p=0.9, min_p=0.05),
    dict(repetition_penalty=2.0, temperature=0.9, top_k=200, top_p=0.99, min_p=0.2),
]


def main():
    g = torch.Generator().manual_seed(1126)
    cases = []
    for i in range(40):
        vocab = [8, 64, 300, 1000][i % 4]
        scale = [0.5, 2.0, 6.0][i % 3]
        logits = torch.randn(vocab, generator=g) * scale
        ids = torch.randint(0, vocab, (int(torch.randint(0, 20, (1,), generator=g)),), generator=g)
        params = PARAMS[i % len(PARAMS)]
        x = logits[None, :]
        input_ids = ids[None, :]
        case = {
            "logits": [float(v) for v in logits],
            "input_ids": ids.tolist(),
            "params": params,
            "repetition_penalty": encode(RepetitionPenaltyLogitsProcessor(params["repetition_penalty"])(input_ids, x.clone())[0]),
            "temperature": encode(TemperatureLogitsWarper(params["temperature"])(input_ids, x.clone())[0]),
            "top_p": encode(TopPLogitsWarper(params["top_p"])(input_ids, x.clone())[0]) if params["top_p"] < 1.0 else None,
            "top_k": encode(TopKLogitsWarper(params["top_k"])(input_ids, x.clone())[0]) if params["top_k"] else None,
            "min_p": encode(MinPLogitsWarper(params["min_p"])(input_ids, x.clone())[0]) if params["min_p"] is not None else None,
            "chain": encode(chain(params)(input_ids, x.clone())[0]),
        }
        cases.append(case)
    write_json(ROOT / "crates/llmjp-sampler/tests/golden/processors.json",
               {"generator": f"transformers {transformers.__version__}, torch {torch.__version__}", "cases": cases})


if __name__ == "__main__":
    main()
