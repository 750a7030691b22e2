"""Embedding throughput: naturelens' engine against what research scripts do, in one run.

The model is the DINOv2-small architecture (hidden 384, 12 layers, 6 heads, patch 14,
224 px input) with random weights: the compute is the same as the real checkpoint's.
Photos are generated JPEG files on disk (640 x 480, like Flickr's "medium" size).

- baseline: ``AutoImageProcessor`` + ``AutoModel``, one photo at a time, fp32, default
  attention; decoding with ``Image.open(path).convert("RGB")``.
- naturelens: ``embed_photos`` (threaded draft-mode decoding overlapped with batched
  inference, weights in the precision chosen by ``--precision``) into a fresh workspace.

Efficiency is the model's FLOP/s (FLOPs counted by torch's FlopCounterMode times photos/s)
divided by the matrix-multiply FLOP/s measured in the same run at the same precision
(best of several 2048 x 2048 products, before and after the engine runs).

    python benchmarks/embed_throughput.py [--photos 512] [--batch-size 32] [--repeat 3]
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


def run_baseline(folder: Path, paths: list[Path]):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    vectors = []
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        vectors.append(out.pooler_output[0].numpy())
    seconds = time.perf_counter() - start
    return len(paths) / seconds, np.stack(vectors)


def run_engine(ws_root: Path, photos: Path, model: Path, batch_size: int, precision: str):
    from naturelens.embed import embed_photos, load_embeddings
    from naturelens.workspace import Workspace

    ws = Workspace.open(ws_root)
    shutil.rmtree(ws_root / "embeddings", ignore_errors=True)
    ids = ws.photo_ids()
    start = time.perf_counter()
    emb = embed_photos(ws, str(model), batch_size=batch_size, precision=precision)
    seconds = time.perf_counter() - start
    assert emb.computed == len(ids), (emb.computed, len(ids))
    # Map back to files so the vectors can be compared with the baseline's.
    paths = {pid: Path(p).name for pid, p in ws.photo_paths(ids).items()}
    got_ids, vectors = load_embeddings(ws, str(model), ids)
    ws.close()
    return len(ids) / seconds, [paths[i] for i in got_ids], vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--baseline-photos", type=int, default=None, help="default: all")
    parser.add_argument("--batch-size", type=int, default=32, help="engine batch (its default)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="engine runs (median reported)")
    parser.add_argument("--work", type=Path, default=None, help="folder to keep photos/model in")
    args = parser.parse_args()

    import numpy as np
    import torch

    from naturelens.backbones import pick_device, pick_dtype
    from naturelens.workspace import Workspace

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
    dtype = pick_dtype(args.precision, pick_device("cpu"))
    flops = model_flops_per_photo(model)
    print(f"{len(paths)} JPEGs of 640x480 in {photos}; torch threads {torch.get_num_threads()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"model FLOPs per photo (224 px): {flops / 1e9:.2f} GFLOP")

    base_paths = paths[: args.baseline_photos] if args.baseline_photos else paths
    base_rate, base_vectors = run_baseline(model, base_paths)
    print(f"baseline (processor + model, 1 photo at a time, fp32): {base_rate:.1f} photos/s")

    peak_before = matmul_flops(dtype)
    rates = []
    for i in range(args.repeat):
        rate, names, vectors = run_engine(ws_root, photos, model, args.batch_size, args.precision)
        rates.append(rate)
        print(f"naturelens run {i + 1}: {rate:.1f} photos/s")
    peak_after = matmul_flops(dtype)
    peak = max(peak_before, peak_after)
    rate = statistics.median(rates)

    by_name = {p.name: v for p, v in zip(base_paths, base_vectors, strict=True)}
    pairs = [(by_name[n], v) for n, v in zip(names, vectors, strict=True) if n in by_name]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    achieved = flops * rate
    dname = str(dtype).replace("torch.", "")
    print()
    print(f"{'':<44}{'photos/s':>10}")
    print(f"{'baseline':<44}{base_rate:>10.1f}")
    chunk = 4 * torch.get_num_threads()
    label = f"naturelens (batch {args.batch_size}, chunks of {chunk}, {dname})"
    print(f"{label:<44}{rate:>10.1f}")
    print(f"speed-up: {rate / base_rate:.2f}x")
    print(
        f"matmul roofline ({dname}, 2048^3): {peak_before / 1e9:.0f} GFLOP/s before, "
        f"{peak_after / 1e9:.0f} after; achieved {achieved / 1e9:.0f} GFLOP/s"
    )
    print(f"efficiency: {achieved / peak:.2f} of the measured roofline")
    print(
        "embedding agreement with the fp32 baseline: "
        f"cosine min {cos.min():.4f}, mean {cos.mean():.4f}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
