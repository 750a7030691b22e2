"""Embedding throughput: naturelens' engine against what research scripts do, in one run.

The model is the DINOv2-small architecture (hidden 384, 12 layers, 6 heads, patch 14,
224 px input) with random weights: the compute is the same as the real checkpoint's.
Photos are generated JPEG files on disk (640 x 480, like Flickr's "medium" size).

- baseline: ``AutoImageProcessor`` + ``AutoModel``, one photo at a time, fp32, default
  attention; decoding with ``Image.open(path).convert("RGB")``; a new slice of
  ``--baseline-photos`` files each round.
- naturelens: ``embed_photos`` (threaded draft-mode decoding overlapped with batched
  inference, weights in the precision chosen by ``--precision``, compiled or not as
  ``--compile`` says) into a fresh workspace. A compiled job pays its compile in every
  round, as a user's job does; the efficiency without it is printed too.

Efficiency is the model's FLOP/s (FLOPs counted by torch's FlopCounterMode times photos/s)
divided by the matrix-multiply FLOP/s measured in the same run at the same precision
(best of several 2048 x 2048 products, just before and just after each engine pass).

A shared machine's speed drifts, so the script runs rounds: each round times the baseline
on a slice of the photos, then the roofline, the engine on all photos, and the roofline
again; speed-up and efficiency are computed per round and their medians reported.

    python benchmarks/embed_throughput.py [--photos 512] [--rounds 3] [--batch-size 32]
        [--compile off|on|auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_photos(folder: Path, n: int) -> list[Path]:
    from naturelens.testing.synthetic import synthetic_photo

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            img = synthetic_photo(i % 6, i, size=640).crop((0, 80, 640, 560))
            img.save(path, quality=90)
        paths.append(path)
    return paths


def make_model(folder: Path) -> Path:
    """DINOv2-small architecture, random weights, the real checkpoint's processor."""
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
    )
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def matmul_flops(dtype, size: int = 2048, reps: int = 10, rounds: int = 3) -> float:
    """Best measured FLOP/s of a square matrix product in ``dtype``."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
    return best


def model_flops_per_photo(folder: Path) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(pixel_values=torch.zeros(1, 3, 224, 224))
    return float(counter.get_total_flops())


class Baseline:
    """What research scripts do: processor + model, one photo at a time, fp32."""

    def __init__(self, folder: Path):
        from transformers import AutoImageProcessor, AutoModel

        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def run(self, paths: list[Path]):
        import numpy as np
        import torch
        from PIL import Image

        vectors = []
        start = time.perf_counter()
        for path in paths:
            image = Image.open(path).convert("RGB")
            inputs = self.processor(images=image, return_tensors="pt")
            with torch.no_grad():
                out = self.model(**inputs)
            vectors.append(out.pooler_output[0].numpy())
        return len(paths) / (time.perf_counter() - start), np.stack(vectors)


def run_engine(ws_root: Path, model: Path, batch_size: int, precision: str, compile: str):
    from naturelens.models.embedding import embed_photos, load_embeddings
    from naturelens.workspace.core import Workspace

    ws = Workspace.open(ws_root)
    shutil.rmtree(ws_root / "embeddings", ignore_errors=True)
    ids = ws.photo_ids()
    start = time.perf_counter()
    emb = embed_photos(ws, str(model), batch_size=batch_size, precision=precision, compile=compile)
    seconds = time.perf_counter() - start
    if compile != "off":
        print(f"  model: {emb.compiled}; {emb.compile_seconds:.1f} s of it compiling", flush=True)
    assert emb.computed == len(ids), (emb.computed, len(ids))
    # Map back to files so the vectors can be compared with the baseline's.
    paths = {pid: Path(p).name for pid, p in ws.photo_paths(ids).items()}
    got_ids, vectors = load_embeddings(ws, str(model), ids)
    ws.close()
    rates = (len(ids) / seconds, len(ids) / (seconds - emb.compile_seconds))
    return rates, dict(zip([paths[i] for i in got_ids], vectors, strict=True))


def model_only_rate(model: Path, paths: list[Path], precision: str) -> float:
    """The engine's model on already decoded photos: the ceiling for the whole engine."""
    import numpy as np

    from naturelens.models.backbones import load_backbone

    backbone = load_backbone(str(model), device="cpu", precision=precision)
    pixels = np.stack([backbone.preprocessing.decode(p.read_bytes()) for p in paths[:32]])
    backbone.embed(pixels)
    start = time.perf_counter()
    for _ in range(4):
        backbone.embed(pixels)
    return 4 * len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument(
        "--baseline-photos",
        type=int,
        default=128,
        help="baseline photos per round (a new slice each)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="engine batch (its default)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--compile",
        default="off",
        choices=["auto", "on", "off"],
        help="the engine's compile option (on: efficiency is also given without the compile)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of baseline, roofline, engine"
    )
    parser.add_argument("--work", type=Path, default=None, help="folder to keep photos/model in")
    args = parser.parse_args()

    import numpy as np
    import torch

    from naturelens.models.backbones import load_backbone
    from naturelens.workspace.core import Workspace

    work = args.work or Path(tempfile.mkdtemp(prefix="naturelens-bench-"))
    photos = work / "photos"
    paths = make_photos(photos, args.photos)
    model = make_model(work / "dinov2-small-random")
    ws_root = work / "ws"
    if ws_root.exists():
        shutil.rmtree(ws_root)
    ws = Workspace.create(ws_root, "flips")
    ws.ingest([photos])
    ws.close()
    # The roofline in the precision that runs: the engine's own decision (with auto,
    # measured now or cached, as the engine will find it).
    decided = load_backbone(str(model), device="cpu", precision=args.precision)
    dtype = decided.dtype
    dname = str(dtype).replace("torch.", "")
    print(f"precision: {decided.precision.describe()}")
    del decided
    flops = model_flops_per_photo(model)
    baseline = Baseline(model)
    print(f"{len(paths)} JPEGs of 640x480 in {photos}; torch threads {torch.get_num_threads()}")
    print(f"model FLOPs per photo (224 px): {flops / 1e9:.2f} GFLOP")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (this benchmark adds about 2)")
    print()
    print(
        f"{'round':<7}{'baseline':>10}{'naturelens':>12}{'speed-up':>10}"
        f"{'roofline GF/s':>15}{'achieved GF/s':>15}{'efficiency':>12}"
    )
    ratios, efficiencies, cosines, steadies = [], [], [], []
    for r in range(args.rounds):
        lo = (r * args.baseline_photos) % len(paths)
        base_paths = paths[lo : lo + args.baseline_photos]
        base_rate, base_vectors = baseline.run(base_paths)
        peak_before = matmul_flops(dtype)
        (rate, steady), ours = run_engine(
            ws_root, model, args.batch_size, args.precision, args.compile
        )
        peak = (peak_before + matmul_flops(dtype)) / 2
        steadies.append(flops * steady / peak)
        achieved = flops * rate
        ratios.append(rate / base_rate)
        efficiencies.append(achieved / peak)
        for p, v in zip(base_paths, base_vectors, strict=True):
            w = ours[p.name]
            cosines.append(float(v @ w / np.linalg.norm(v) / np.linalg.norm(w)))
        print(
            f"{r + 1:<7}{base_rate:>10.1f}{rate:>12.1f}{rate / base_rate:>9.2f}x"
            f"{peak / 1e9:>15.0f}{achieved / 1e9:>15.0f}{achieved / peak:>12.2f}"
        )
    ceiling = model_only_rate(model, paths, args.precision)
    chunk = 4 * torch.get_num_threads()
    print()
    print(
        f"naturelens: batch {args.batch_size}, forward chunks of {chunk}, {dname}; "
        f"baseline: processor + model, one photo at a time, fp32"
    )
    print(f"median speed-up: {statistics.median(ratios):.2f}x")
    if args.compile != "off":
        print(
            "median efficiency without the time compiling: "
            f"{statistics.median(steadies):.2f} of the {dname} roofline"
        )
    print(
        f"median efficiency: {statistics.median(efficiencies):.2f} of the measured {dname} roofline"
    )
    print(
        f"the model alone on decoded photos, just after: {ceiling:.1f} photos/s "
        f"({ceiling * flops / 1e9:.0f} GFLOP/s)"
    )
    print(
        "embedding agreement with the fp32 baseline: "
        f"cosine min {min(cosines):.4f}, mean {statistics.mean(cosines):.4f}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
