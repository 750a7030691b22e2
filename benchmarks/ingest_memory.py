"""Peak memory of ingesting 1,000 versus 10,000 photos: it must not grow with the count.

Each measurement runs in a fresh process and reports its peak resident memory. The
baseline is what research scripts do: decode every photo into a list, then write a table.

    python benchmarks/ingest_memory.py [--photos 10000] [--small 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
mode, folder, ws_dir, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
files = sorted(folder.glob("*.jpg"))[:n]
manifest = Path(ws_dir + ".csv")
manifest.write_text("id,path\\n" + "".join(f"{i},{f}\\n" for i, f in enumerate(files)))
start = time.perf_counter()
if mode == "naturelens":
    from naturelens.workspace import Workspace
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


def measure(mode: str, folder: Path, n: int, tmp: Path) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(folder), str(tmp / f"{mode}-{n}"), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=256, help="side of the generated photos")
    args = parser.parse_args()
    from naturelens.testing.synthetic import synthetic_photo

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "photos"
        folder.mkdir()
        start = time.perf_counter()
        for i in range(args.photos):
            synthetic_photo(i % 6, i, size=args.size).save(folder / f"{i:06d}.jpg", quality=85)
        took = time.perf_counter() - start
        print(f"generated {args.photos} photos of {args.size}px in {took:.0f} s")
        print(f"{'code':<12}{'photos':>8}{'peak MiB':>10}{'seconds':>9}")
        peaks = {}
        for mode in ("baseline", "naturelens"):
            for n in (args.small, args.photos):
                peak, seconds = measure(mode, folder, n, tmp)
                peaks[mode, n] = peak
                print(f"{mode:<12}{n:>8}{peak:>10.0f}{seconds:>9.1f}")
        for mode in ("baseline", "naturelens"):
            ratio = peaks[mode, args.photos] / peaks[mode, args.small]
            print(f"{mode}: peak at {args.photos} / peak at {args.small} = {ratio:.2f}")


if __name__ == "__main__":
    main()
