"""Peak memory of embedding 1,000 versus 10,000 photos: it must not grow with the count.

One workspace holds the photos; each measurement runs in a fresh process and reports its
peak resident memory. The model is the tiny DINOv2 test model, so the figures show the
engine's own memory (decoding, batching, writing), not a large model's weights.
The baseline is what research scripts do: open every photo into a list, embed the list
in batches, keep the vectors in memory and save them at the end.

    python benchmarks/embed_memory.py [--photos 10000] [--small 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = """
import resource, sys, time
mode, ws_dir, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from naturelens.workspace import Workspace
ws = Workspace.open(ws_dir)
ids = ws.photo_ids()[:n]
start = time.perf_counter()
if mode == "naturelens":
    from naturelens.embed import embed_photos
    emb = embed_photos(ws, model, ids, batch_size=32, precision="fp32")
    assert emb.computed == n, emb.computed
else:
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel
    processor = AutoImageProcessor.from_pretrained(model)
    net = AutoModel.from_pretrained(model).eval()
    paths = ws.photo_paths(ids)
    images = [Image.open(paths[i]).convert("RGB") for i in ids]
    vectors = []
    with torch.no_grad():
        for s in range(0, n, 32):
            inputs = processor(images=images[s:s + 32], return_tensors="pt")
            vectors.append(net(**inputs).pooler_output.numpy())
    np.save(ws_dir + f"-baseline-{n}.npy", np.concatenate(vectors))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def measure(mode: str, ws_dir: Path, model: Path, n: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(ws_dir), str(model), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=96, help="side of the generated photos")
    args = parser.parse_args()
    import shutil

    from naturelens.testing.synthetic import synthetic_photo
    from naturelens.testing.tiny_models import tiny_model
    from naturelens.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "photos"
        folder.mkdir()
        start = time.perf_counter()
        for i in range(args.photos):
            synthetic_photo(i % 6, i, size=args.size).save(folder / f"{i:06d}.jpg", quality=85)
        model = tiny_model("dinov2", tmp / "models")
        ws = Workspace.create(tmp / "ws", "flips")
        ws.ingest([folder], labels_from_folders=False)
        ws.close()
        took = time.perf_counter() - start
        print(f"generated and ingested {args.photos} photos of {args.size}px in {took:.0f} s")
        print(f"{'code':<12}{'photos':>8}{'peak MiB':>10}{'seconds':>9}")
        peaks = {}
        for mode in ("baseline", "naturelens"):
            for n in (args.small, args.photos):
                shutil.rmtree(tmp / "ws" / "embeddings", ignore_errors=True)
                peak, seconds = measure(mode, tmp / "ws", model, n)
                peaks[mode, n] = peak
                print(f"{mode:<12}{n:>8}{peak:>10.0f}{seconds:>9.1f}")
        for mode in ("baseline", "naturelens"):
            ratio = peaks[mode, args.photos] / peaks[mode, args.small]
            print(f"{mode}: peak at {args.photos} / peak at {args.small} = {ratio:.2f}")


if __name__ == "__main__":
    main()
