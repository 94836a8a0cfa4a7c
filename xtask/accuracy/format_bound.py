"""What the Q8_0 and Q4_0 formats themselves cost on a checkpoint, computed by transformers:
every linear weight rounded to the format exactly as GGML's reference quantizers do
(`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`; the embedding and the LM head in Q8_0 for
both, as `llmjp` and llama.cpp keep them), then the model run in f32 and compared with the
same checkpoint's weights unrounded, over the teacher-forced positions `cargo xtask accuracy`
uses, with the same metrics (`llmjp_testdata::LogitAgreement`).

No engine can do better than this with the format: it is the error of the rounded weights
alone, with exact f32 arithmetic. `cargo xtask accuracy` prints ours beside it.

Usage: python3 format_bound.py MODEL_DIR [--positions N]
"""
import sys

import torch
from transformers import AutoModelForCausalLM

CLEAR_MARGIN = 0.1  # llmjp_testdata::CLEAR_MARGIN


def round_half_away(x):
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def q8_0(w):
    blocks = w.reshape(-1, 32)
    d = blocks.abs().amax(1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = round_half_away(blocks * inv)
    return (q * d.half().float()).reshape(w.shape)


def q4_0(w):
    blocks = w.reshape(-1, 32)
    at = blocks.abs().argmax(1, keepdim=True)
    d = blocks.gather(1, at) / -8
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = torch.clamp(torch.trunc(blocks * inv + 8.5), max=15)
    return ((q - 8) * d.half().float()).reshape(w.shape)


def agreement(ref, ours):
    err = (ref - ours).double()
    rel_rms = (err.pow(2).sum() / ref.double().pow(2).sum()).sqrt().item()
    top2 = ref.topk(2, dim=-1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    clear = margin >= CLEAR_MARGIN * ref.std(dim=-1, unbiased=False)
    agree = (ours.argmax(-1) == top2.indices[:, 0]) & clear
    return err.abs().max().item(), rel_rms, int(clear.sum()), int(agree.sum())


def main():
    args = sys.argv[1:]
    positions = 256
    if "--positions" in args:
        at = args.index("--positions")
        positions = int(args[at + 1])
        del args[at:at + 2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args[0], dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[((i * 7919 + 13) * 2654435761) % vocab for i in range(positions)]])
    original = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}

    def logits():
        with torch.no_grad():
            return model(ids).logits[0].float()

    reference = logits()
    print(f"{positions} positions of {args[0]}; transformers, f32 arithmetic, weights rounded to the format")
    print("| format | max abs error | relative RMS error | clear positions | top-1 agreement at clear |")
    print("|---|---|---|---|---|")
    for name, rounding in [("q8_0", q8_0), ("q4_0", q4_0)]:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n not in original or "block_sparse_moe.gate" in n or p.shape[1] % 32:
                    continue
                outer = n in ("lm_head.weight", "model.embed_tokens.weight")
                p.copy_((q8_0 if outer else rounding)(original[n]))
        max_abs, rel_rms, clear, agree = agreement(reference, logits())
        print(f"| {name} (the format alone) | {max_abs:.4f} | {rel_rms * 100:.2f} % | "
              f"{clear} / {positions} | {100 * agree / max(clear, 1):.1f} % |")


if __name__ == "__main__":
    main()
