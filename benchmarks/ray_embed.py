"""The same embedding job locally and on Ray (1 and 2 workers), side by side in one run.

The model is the DINOv2-small architecture with random weights (the compute of the real
checkpoint; see ``embed_throughput.py``); the photos are generated 640 x 480 JPEGs. Each
pass embeds every photo into an empty store of the same workspace:

- local: ``embed_photos`` (threaded decoding, batched bf16/fp32 inference, one process);
- Ray: ``embed_on_ray`` on a local Ray started once before the passes (its start-up is
  reported apart): read and decode as Ray tasks, the model in a pool of 1 or 2 workers,
  the driver writing the store.

Per pass it prints photos/s over the whole call (wall, including starting the workers and
loading the model in each) and photos/s once the first batch has arrived (steady), and the
Ray path's overhead against the local path: ``local rate / Ray rate - 1``. The passes are
repeated ``--rounds`` times in turn and medians reported, because a shared machine's speed
drifts.

    python benchmarks/ray_embed.py [--photos 256] [--rounds 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from embed_throughput import make_model, make_photos  # noqa: E402


def timed(run) -> tuple[float, float, int, int]:
    """Run an embedding pass ``run(progress) -> photos``.

    Returns wall seconds, seconds after the first batch arrived, photos, and photos that
    arrived after the first batch (for the steady rate).
    """
    first: list[float] = []
    later = [0]

    def progress(n: int) -> None:
        if first:
            later[0] += n
        else:
            first.append(time.perf_counter())

    start = time.perf_counter()
    photos = run(progress)
    end = time.perf_counter()
    return end - start, end - (first[0] if first else start), photos, later[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from naturelens.models.embedding import embed_photos
    from naturelens.scale.cluster import RayOptions, connect
    from naturelens.scale.embed import embed_on_ray
    from naturelens.workspace.core import Workspace

    work = args.work or Path(tempfile.mkdtemp(prefix="nl-ray-bench-"))
    make_photos(work / "photos", args.photos)
    model = str(make_model(work / "model"))
    root = work / "ws"
    if not (root / "workspace.yaml").exists():
        Workspace.create(root, "flips").ingest([work / "photos"], labels_from_folders=False)
    cores = os.cpu_count() or 1

    started = time.perf_counter()
    connect(RayOptions(workers=2))
    ray_start = time.perf_counter() - started

    passes = {
        "local": lambda ws, progress: embed_photos(
            ws, model, batch_size=args.batch_size, precision=args.precision, progress=progress
        ),
        # One worker gets every core's threads; two workers split them.
        "ray, 1 worker": lambda ws, progress: embed_on_ray(
            ws,
            model,
            RayOptions(workers=1, cpus_per_worker=cores, batch_size=args.batch_size),
            precision=args.precision,
            progress=progress,
        ),
        "ray, 2 workers": lambda ws, progress: embed_on_ray(
            ws,
            model,
            RayOptions(workers=2, cpus_per_worker=max(1, cores // 2), batch_size=args.batch_size),
            precision=args.precision,
            progress=progress,
        ),
    }
    wall: dict[str, list[float]] = {k: [] for k in passes}
    steady: dict[str, list[float]] = {k: [] for k in passes}
    for round_ in range(args.rounds):
        for name, run in passes.items():
            with Workspace.open(root) as ws:
                shutil.rmtree(root / "embeddings", ignore_errors=True)

                def photos(progress, run=run, ws=ws) -> int:
                    emb = run(ws, progress)
                    return emb.computed + emb.failed

                seconds, after_first, n, later = timed(photos)
            assert n == args.photos, (name, n)
            wall[name].append(n / seconds)
            steady[name].append(later / after_first if after_first > 0 else float("nan"))
            print(
                f"round {round_ + 1} {name:15s} {n / seconds:7.1f} photos/s wall, "
                f"{steady[name][-1]:7.1f} after the first batch",
                flush=True,
            )

    print(f"\nRay start-up (ray.init, local): {ray_start:.1f} s, not counted below")
    print(f"{args.photos} photos, batch {args.batch_size}, {cores} cores, medians of {args.rounds}")
    print("| path | photos/s (wall) | photos/s (after first batch) | overhead vs local (wall) |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(wall["local"])
    for name in passes:
        rate = statistics.median(wall[name])
        rate_steady = statistics.median(steady[name])
        overhead = "-" if name == "local" else f"{base / rate - 1:+.0%}"
        print(f"| {name} | {rate:.1f} | {rate_steady:.1f} | {overhead} |")


if __name__ == "__main__":
    main()
