"""Attention at DINOv2's 257 tokens: torch's ``sdpa`` against ways around the odd length.

DINOv2-small at 224 px attends over 257 tokens (256 patches and the class token), 6 heads
of 64, in bf16 on a CPU; its flash kernel runs that length slower than 256 or 288. Each
round times, interleaved:

- ``sdpa 257``: what the model runs (the baseline);
- ``sdpa 256`` / ``272`` / ``288``: the kernel at other lengths, for reference (work
  counted at that length);
- ``padded 272`` / ``288``: keys and values padded with zeros and masked off (useful work
  counted at 257);
- ``split``: the flash kernel over the first 256 keys, the 257th key by hand, merged by
  log-sum-exp (the same attention, useful work counted at 257).

Each as GFLOP/s (4 x batch x heads x queries x keys x 64) and as a ratio to the baseline,
with the bf16 matrix-product roofline of the same round; the largest difference of each
exact way from the fp32 result is printed once.

    python benchmarks/attention_length.py [--photos 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

HEADS, HEAD_DIM, TOKENS = 6, 64, 257


def seconds(f, *args, reps: int = 5) -> float:
    import torch

    with torch.inference_mode():
        f(*args)
        best = float("inf")
        for _ in range(reps):
            started = time.perf_counter()
            f(*args)
            best = min(best, time.perf_counter() - started)
    return best


def padded(q, k, v, length: int):
    """Keys and values padded with zeros to ``length``, the padding masked off."""
    import torch
    import torch.nn.functional as F

    extra = length - k.shape[2]
    k = F.pad(k, (0, 0, 0, extra))
    v = F.pad(v, (0, 0, 0, extra))
    mask = torch.zeros(k.shape[2], dtype=torch.bool)
    mask[: length - extra] = True
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.expand(q.shape[2], -1))


def split(q, k, v):
    """Flash attention over all keys but the last, the last by hand, merged by log-sum-exp."""
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    head, lse = flash(q, k[:, :, :-1], v[:, :, :-1])
    last = (q.float() @ k[:, :, -1:].float().transpose(-1, -2)).squeeze(-1) * q.shape[-1] ** -0.5
    top = torch.maximum(lse, last)
    w_head, w_last = torch.exp(lse - top), torch.exp(last - top)
    total = w_head + w_last
    out = head.float() * (w_head / total).unsqueeze(-1)
    out += v[:, :, -1:].float() * (w_last / total).unsqueeze(-1)
    return out.to(q.dtype)


def main() -> int:
    import torch
    import torch.nn.functional as F
    from embed_throughput import matmul_flops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    def qkv(length):
        shape = (args.photos, HEADS, length, HEAD_DIM)
        return [torch.randn(shape).to(torch.bfloat16) for _ in range(3)]

    def flops(length):
        return 4 * args.photos * HEADS * length * length * HEAD_DIM

    inputs = {n: qkv(n) for n in (256, 257, 272, 288)}
    attend = F.scaled_dot_product_attention
    ways = {  # name: (function, inputs, useful FLOPs)
        "sdpa 257": (attend, inputs[257], flops(TOKENS)),
        "sdpa 256": (attend, inputs[256], flops(256)),
        "sdpa 272": (attend, inputs[272], flops(272)),
        "sdpa 288": (attend, inputs[288], flops(288)),
        "padded 272": (lambda *a: padded(*a, 272), inputs[257], flops(TOKENS)),
        "padded 288": (lambda *a: padded(*a, 288), inputs[257], flops(TOKENS)),
        "split": (split, inputs[257], flops(TOKENS)),
    }
    q, k, v = inputs[257]
    exact = attend(q.float(), k.float(), v.float())
    for name in ("sdpa 257", "padded 272", "padded 288", "split"):
        f, args_, _ = ways[name]
        print(f"{name}: largest difference from fp32 {(f(*args_).float() - exact).abs().max():.4f}")
    for r in range(args.rounds):
        roof = matmul_flops(torch.bfloat16)
        rates = {name: work / seconds(f, *a) / 1e9 for name, (f, a, work) in ways.items()}
        base = rates["sdpa 257"]
        cells = ", ".join(f"{n} {g:.0f} ({g / base:.2f}x)" for n, g in rates.items())
        print(f"round {r}: bf16 roofline {roof / 1e9:.0f} GFLOP/s; {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
