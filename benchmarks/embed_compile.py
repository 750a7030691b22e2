"""The ViT's attention and compilation on the CPU: what the engine runs against the options.

DINOv2-small architecture (random weights: the real model's compute), one batch of
decoded 224 px photos, the model alone (no decoding). The ways to run it, interleaved in
rounds, each as a fraction of the matrix-multiply roofline in its own precision, measured
in the same round:

- ``plain fp32``: ``load_backbone(precision="fp32")``, the attention it loads with on a CPU
  (eager-style);
- ``sdpa fp32``: transformers' scaled-dot-product attention;
- ``auto``: ``load_backbone()`` as a user gets it: precision and attention measured at
  first use on this machine (an empty decision cache; the choice is printed);
- ``compiled fp32``: the plain module through ``torch.compile`` (inductor; its compile time
  is reported apart; ``--no-compile`` leaves it out);
- ``auto compiled``: ``auto`` through the engine's compiled path
  (:class:`naturelens.models.compiled.CompiledEmbedder`: ``torch.compile`` with frozen
  weights, batches of ``--batch`` photos; ``--no-compile`` leaves it out);
- ``auto compiled +``: the same on a private copy of the model, compiled with the inductor
  options given by ``--inductor`` (e.g. ``max_autotune=1`` for inductor's own AMX matrix
  products, ``cpp.enable_concat_linear=1`` to fuse the query, key and value products).

    python benchmarks/embed_compile.py [--batch 32] [--rounds 3] [--no-compile]
        [--inductor KEY=VALUE ...]
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


def with_options(backbone, args, x):
    """The engine's compiled path on a copy of ``backbone``, compiled with ``--inductor``."""
    import copy

    import torch
    from torch._inductor import config

    from naturelens.models.compiled import CompiledEmbedder

    flags = {"1": True, "true": True, "0": False, "false": False}
    options = {k: flags.get(v.lower(), v) for k, v in (o.split("=", 1) for o in args.inductor)}
    twin = copy.copy(backbone)
    twin.module = copy.deepcopy(backbone.module)  # its own compiled graph
    compiled = CompiledEmbedder(twin, args.batch)
    started = time.perf_counter()
    with config.patch(options), torch.inference_mode():
        compiled.features(x.to(twin.dtype))
    print(f"auto compiled + {options}: {time.perf_counter() - started:.0f} s to compile")
    return lambda v: compiled.features(v.to(twin.dtype))


def main() -> int:
    import tempfile

    import torch
    from embed_throughput import make_model, matmul_flops, model_flops_per_photo
    from transformers import AutoModel

    from naturelens.models.backbones import load_backbone
    from naturelens.models.compiled import CompiledEmbedder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NATURELENS_CACHE"] = str(Path(tmp) / "cache")  # auto measures afresh
        folder = make_model(Path(tmp) / "dinov2-small")
        flops = model_flops_per_photo(folder)
        x = torch.randn(args.batch, 3, 224, 224)
        plain = load_backbone(str(folder), precision="fp32").module
        sdpa = AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        started = time.perf_counter()
        auto = load_backbone(str(folder))
        print(f"auto: {auto.precision.describe()} ({time.perf_counter() - started:.0f} s)")
        ways = {
            "plain fp32": (torch.float32, lambda v: plain(pixel_values=v)),
            "sdpa fp32": (torch.float32, lambda v: sdpa(pixel_values=v)),
            "auto": (auto.dtype, lambda v: auto.module(pixel_values=v.to(auto.dtype))),
        }
        if not args.no_compile:
            started = time.perf_counter()
            compiled = torch.compile(plain)
            with torch.inference_mode():
                compiled(pixel_values=x)
            print(f"torch.compile: {time.perf_counter() - started:.0f} s to compile")
            ways["compiled fp32"] = (torch.float32, lambda v: compiled(pixel_values=v))
            started = time.perf_counter()
            frozen = CompiledEmbedder(auto, args.batch)
            with torch.inference_mode():
                frozen.features(x.to(auto.dtype))
            print(f"auto compiled: {time.perf_counter() - started:.0f} s to compile")
            ways["auto compiled"] = (auto.dtype, lambda v: frozen.features(v.to(auto.dtype)))
            if args.inductor:
                ways["auto compiled +"] = (auto.dtype, with_options(auto, args, x))
        dtypes = {dtype for dtype, _ in ways.values()}
        for r in range(args.rounds):
            roof = {dtype: matmul_flops(dtype) for dtype in dtypes}
            rates = {name: photos_per_s(f, x) for name, (_, f) in ways.items()}
            roof = {dtype: max(v, matmul_flops(dtype)) for dtype, v in roof.items()}
            roofs = ", ".join(f"{str(d)[6:]} {v / 1e9:.0f}" for d, v in roof.items())
            cells = ", ".join(
                f"{n} {v:.2f} photos/s ({v * flops / roof[ways[n][0]]:.2f} of roofline)"
                for n, v in rates.items()
            )
            print(f"round {r}: roofline GFLOP/s {roofs}; {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
