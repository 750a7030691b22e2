"""Peak memory of ingesting 1,000 versus 10,000 photos: it must not grow with the count.

Each measurement runs in a fresh process and reports its peak resident memory. The
baseline is what research scripts do: decode every photo into a list, then write a table.

With ``--large-pngs N``, it measures instead the peak of the whole process tree (the
reading workers included) while 2 workers ingest N large PNGs, with a memory budget that
admits one decode at a time and with one so large that it never binds (as before the
budget existed); photos and results are the same.

    python benchmarks/ingest_memory.py [--photos 10000] [--small 1000]
    python benchmarks/ingest_memory.py --large-pngs 8 [--png-side 8000]
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


LARGE = """
import sys, threading, time
import psutil
from naturelens.workspace.core import Workspace
folder, ws_dir, budget = sys.argv[1], sys.argv[2], sys.argv[3]
me, peak, done = psutil.Process(), [0], threading.Event()

def sample():  # the tree's resident memory, every 5 ms
    while not done.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.005)

threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
ws = Workspace.create(ws_dir, "flips")
report = ws.ingest([folder], workers=2, memory_budget=budget)
seconds = time.perf_counter() - start
done.set()
assert report.failed == 0 and report.added == report.seen, report
print(report.added, peak[0] / 2**20, seconds)
"""


def large_pngs(count: int, side: int) -> None:
    """Peak tree memory of 2 workers reading ``count`` PNGs, with and without a budget."""
    import subprocess
    import sys

    from PIL import Image

    from naturelens.sources.images import decode_cost

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "pngs"
        folder.mkdir()
        for i in range(count):
            Image.new("RGB", (side, side), (i % 256, 120, 60)).save(folder / f"{i}.png")
        with Image.open(folder / "0.png") as img:
            one = decode_cost(img)
        budgets = {"one decode at a time": int(one * 1.2), "never binds": 10**15}
        print(f"{count} PNGs of {side} x {side}, one decode about {one / 2**20:.0f} MiB")
        print(f"{'budget':<24}{'bytes':>18}{'peak MiB':>10}{'seconds':>9}")
        for name, budget in budgets.items():
            out = subprocess.run(
                [sys.executable, "-c", LARGE, folder, tmp / f"ws-{budget}", str(budget)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            print(f"{name:<24}{budget:>18}{float(out[-2]):>10.0f}{float(out[-1]):>9.1f}")


def main() -> None:
    def extra(parser) -> None:
        parser.add_argument("--large-pngs", type=int, default=0, help="measure N large PNGs")
        parser.add_argument("--png-side", type=int, default=8000)

    args = arguments(__doc__, size=256, extra=extra)
    if args.large_pngs:
        large_pngs(args.large_pngs, args.png_side)
        return
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
