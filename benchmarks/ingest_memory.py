"""Peak memory of ingesting 1,000 versus 10,000 photos: it must not grow with the count.

Each measurement runs in a fresh process and reports its peak resident memory. The
baseline is what research scripts do: decode every photo into a list, then write a table.

    python benchmarks/ingest_memory.py [--photos 10000] [--small 1000]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from peak_memory import arguments, peak_table, run_child, write_photos

CHILD = """
import resource, sys, time
from pathlib import Path
mode, folder, ws_dir, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
files = sorted(folder.glob("*.jpg"))[:n]
manifest = Path(ws_dir + ".csv")
manifest.write_text("id,path\\n" + "".join(f"{i},{f}\\n" for i, f in enumerate(files)))
start = time.perf_counter()
if mode == "naturelens":
    from naturelens.workspace.core import Workspace
    ws = Workspace.create(ws_dir, "flips")
    ws.ingest([manifest])
    assert ws.status()["photos"] == n
else:
    import hashlib
    import pyarrow as pa, pyarrow.parquet as pq
    from PIL import Image
    images, rows = [], []
    for f in files:
        data = f.read_bytes()
        img = Image.open(f).convert("RGB")
        images.append(img)
        rows.append({"id": hashlib.sha256(data).hexdigest(), "w": img.width, "h": img.height})
    pq.write_table(pa.Table.from_pylist(rows), ws_dir + ".parquet")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def main() -> None:
    args = arguments(__doc__, size=256)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "photos"
        write_photos(folder, args.photos, args.size)
        peak_table(
            args.small,
            args.photos,
            lambda mode, n: run_child(CHILD, mode, folder, tmp / f"{mode}-{n}", n),
        )


if __name__ == "__main__":
    main()
