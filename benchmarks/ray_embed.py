"""The same embedding job locally and on Ray (1 and 2 workers), side by side in one run.

The model is the DINOv2-small architecture with random weights (the compute of the real
checkpoint; see ``embed_throughput.py``); the photos are generated 640 x 480 JPEGs. Each
pass embeds every photo into an empty store of the same workspace:

- local: ``embed_photos`` (threaded decoding, batched bf16/fp32 inference, one process);
- Ray: ``embed_on_ray`` on a local Ray started once before the passes (its start-up is
  reported apart): read and decode as Ray tasks, the model in a pool of 1 or 2 workers,
  the driver writing the store.

Per pass it prints photos/s over the whole call (wall, including starting the workers and
loading the model in each), and the Ray path's overhead against the local path:
``local rate / Ray rate - 1``. (A rate "after the first batch" means nothing on Ray: the
driver receives batches in bursts, after the workers have run ahead.) The passes are
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


def timed(run) -> tuple[float, int]:
    """Run an embedding pass ``run() -> photos``; (wall seconds, photos)."""
    start = time.perf_counter()
    photos = run()
    return time.perf_counter() - start, photos


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
        "local": lambda ws: embed_photos(
            ws, model, batch_size=args.batch_size, precision=args.precision
        ),
        # One worker gets every core's threads; two workers split them.
        "ray, 1 worker": lambda ws: embed_on_ray(
            ws,
            model,
            RayOptions(workers=1, cpus_per_worker=cores, batch_size=args.batch_size),
            precision=args.precision,
        ),
        "ray, 2 workers": lambda ws: embed_on_ray(
            ws,
            model,
            RayOptions(workers=2, cpus_per_worker=max(1, cores // 2), batch_size=args.batch_size),
            precision=args.precision,
        ),
    }
    wall: dict[str, list[float]] = {k: [] for k in passes}
    for round_ in range(args.rounds):
        for name, run in passes.items():
            with Workspace.open(root) as ws:
                shutil.rmtree(root / "embeddings", ignore_errors=True)

                def photos(run=run, ws=ws) -> int:
                    emb = run(ws)
                    return emb.computed + emb.failed

                seconds, n = timed(photos)
            assert n == args.photos, (name, n)
            wall[name].append(n / seconds)
            print(f"round {round_ + 1} {name:15s} {n / seconds:7.2f} photos/s", flush=True)

    print(f"\nRay start-up (ray.init, local): {ray_start:.1f} s, not counted below")
    print(f"{args.photos} photos, batch {args.batch_size}, {cores} cores, medians of {args.rounds}")
    print("| path | photos/s (wall) | overhead vs local |")
    print("| --- | ---: | ---: |")
    base = statistics.median(wall["local"])
    for name in passes:
        rate = statistics.median(wall[name])
        overhead = "-" if name == "local" else f"{base / rate - 1:+.0%}"
        print(f"| {name} | {rate:.2f} | {overhead} |")


if __name__ == "__main__":
    main()
