"""Peak memory of embedding 1,000 versus 10,000 photos: it must not grow with the count.

One workspace holds the photos; each measurement runs in a fresh process and reports its
peak resident memory. The model is the tiny DINOv2 test model, so the figures show the
engine's own memory (decoding, batching, writing), not a large model's weights.
The baseline is what research scripts do: open every photo into a list, embed the list
in batches, keep the vectors in memory and save them at the end.

    python benchmarks/embed_memory.py [--photos 10000] [--small 1000]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peak_memory import arguments, peak_table, run_child, write_photos

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = """
import resource, sys, time
mode, ws_dir, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from naturelens.workspace.core import Workspace
ws = Workspace.open(ws_dir)
ids = ws.photo_ids()[:n]
start = time.perf_counter()
if mode == "naturelens":
    from naturelens.models.embedding import embed_photos
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


def main() -> None:
    args = arguments(__doc__, size=96)
    from naturelens.testing.tiny_models import tiny_model
    from naturelens.workspace.core import Workspace

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        write_photos(tmp / "photos", args.photos, args.size)
        model = tiny_model("dinov2", tmp / "models")
        ws = Workspace.create(tmp / "ws", "flips")
        ws.ingest([tmp / "photos"], labels_from_folders=False)
        ws.close()

        def measure(mode: str, n: int) -> tuple[float, float]:
            shutil.rmtree(tmp / "ws" / "embeddings", ignore_errors=True)
            return run_child(CHILD, mode, tmp / "ws", model, n)

        peak_table(args.small, args.photos, measure)


if __name__ == "__main__":
    main()
