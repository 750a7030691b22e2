"""The ViT's attention and compilation on the CPU: what the engine runs against the options.

DINOv2-small architecture (random weights: the real model's compute), fp32, one batch of
decoded 224 px photos, the model alone (no decoding). Three ways to run it, interleaved in
rounds, each as a fraction of the matrix-multiply roofline measured in the same round:

- ``engine``: what ``load_backbone`` gives on a CPU (its eager-style attention);
- ``sdpa``: transformers' scaled-dot-product attention;
- ``compiled``: the engine's module through ``torch.compile`` (inductor; its compile time
  is reported apart).

    python benchmarks/embed_compile.py [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def photos_per_s(forward, x, reps: int = 3) -> float:
    import torch

    with torch.inference_mode():
        forward(x)
        best = float("inf")
        for _ in range(reps):
            started = time.perf_counter()
            forward(x)
            best = min(best, time.perf_counter() - started)
    return len(x) / best


def main() -> int:
    import tempfile

    import torch
    from embed_throughput import make_model, matmul_flops, model_flops_per_photo
    from transformers import AutoModel

    from naturelens.models.backbones import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model(Path(tmp) / "dinov2-small")
        flops = model_flops_per_photo(folder)
        x = torch.randn(args.batch, 3, 224, 224)
        engine = load_backbone(str(folder), precision="fp32").module
        sdpa = AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        started = time.perf_counter()
        compiled = torch.compile(engine)
        with torch.inference_mode():
            compiled(pixel_values=x)
        print(f"torch.compile: {time.perf_counter() - started:.0f} s to compile")
        ways = {
            "engine": lambda v: engine(pixel_values=v),
            "sdpa": lambda v: sdpa(pixel_values=v),
            "compiled": lambda v: compiled(pixel_values=v),
        }
        for r in range(args.rounds):
            roof = matmul_flops(torch.float32)
            rates = {name: photos_per_s(f, x) for name, f in ways.items()}
            roof = max(roof, matmul_flops(torch.float32))
            cells = ", ".join(
                f"{n} {v:.2f} photos/s ({v * flops / roof:.2f} of roofline)"
                for n, v in rates.items()
            )
            print(f"round {r}: roofline {roof / 1e9:.0f} GFLOP/s; {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
