"""Ingest of 12-megapixel JPEGs against a single-core Pillow full decode, in one run.

The baseline is the decode limit of one core: Pillow reading each file and decoding it at
full size. Beside it: the full inspection ingest used to do per photo (a full decode to
RGB, EXIF orientation, EXIF) on one core, and naturelens ingest itself (worker processes
on every core, JPEGs validated by a draft-mode decode), with one worker and with all.
Each ingest goes into a fresh workspace; every photo must end up in the catalog.

    python benchmarks/ingest_speed.py [--photos 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from naturelens.sources.images import decode_photo, inspect_photo
from naturelens.sources.ingest import default_workers
from naturelens.testing.synthetic import synthetic_photo
from naturelens.workspace.core import Workspace


def write_photos(folder: Path, n: int, width: int, height: int) -> list[Path]:
    """Camera-like JPEGs: a synthetic scene scaled up, with sensor-like noise and EXIF."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    paths = []
    for i in range(n):
        scene = np.asarray(synthetic_photo(i % 6, i, 512).resize((width, height)), np.int16)
        shift = int(rng.integers(0, 64))
        pixels = np.clip(scene + np.roll(noise, shift, axis=1), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[0x0112] = 1
        exif[0x8769] = {36867: "2023:05:01 12:00:00"}
        path = folder / f"photo-{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=92, exif=exif)
        paths.append(path)
    return paths


def pillow_full_decode(paths: list[Path]) -> None:
    for p in paths:
        with Image.open(io.BytesIO(p.read_bytes())) as img:
            img.load()


def full_inspection(paths: list[Path]) -> None:
    """What ingest did per photo before: a full decode to RGB, then the EXIF."""
    for p in paths:
        data = p.read_bytes()
        decode_photo(data)
        with Image.open(io.BytesIO(data)) as img:
            img.getexif()


def draft_inspection(paths: list[Path]) -> None:
    for p in paths:
        inspect_photo(p.read_bytes())


def ingest(paths: list[Path], root: Path, workers: int | None) -> None:
    ws = Workspace.create(root, "flips")
    try:
        report = ws.ingest([paths[0].parent], labels_from_folders=False, workers=workers)
        assert report.added == len(paths) and report.failed == 0, report
    finally:
        ws.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp) / "photos", args.photos, args.width, args.height)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        runs = 0

        def fresh() -> Path:
            nonlocal runs
            runs += 1
            return Path(tmp) / f"ws-{runs}"

        cases = {
            "baseline: Pillow full decode, 1 core": lambda: pillow_full_decode(paths),
            "full inspection as ingest did before, 1 core": lambda: full_inspection(paths),
            "draft inspection, 1 core": lambda: draft_inspection(paths),
            "naturelens ingest, 1 worker": lambda: ingest(paths, fresh(), 1),
            f"naturelens ingest, {cores} workers": lambda: ingest(paths, fresh(), None),
        }
        best = {name: float("inf") for name in cases}
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits all
            for name, fn in cases.items():
                started = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - started)
        print(
            f"{args.photos} JPEGs of {args.width}x{args.height} ({mb:.1f} MiB each), "
            f"{cores} cores ({os.cpu_count()} CPUs), best of {args.repeats}"
        )
        base = args.photos / best["baseline: Pillow full decode, 1 core"]
        for name, seconds in best.items():
            rate = args.photos / seconds
            print(f"{name}: {rate:.2f} photos/s ({rate / base:.2f}x the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
