"""The report on thousands of photos: cached thumbnails and paged galleries.

Builds a workspace of generated photos with metadata, stores one run's predictions, then
writes the report three times in one process: cold (thumbnails made), warm (thumbnails
reused) and with every thumbnail embedded in the HTML (the single-file baseline). Prints
time, HTML size and the ratios.

    .venv/bin/python benchmarks/report_scale.py --photos 5000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from naturelens.report.html import ReportOptions, build_report
from naturelens.testing.synthetic import make_photo_set
from naturelens.workspace.core import Prediction, Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = args.photos // 6
        make_photo_set(root / "photos", "flips", per_class=per_class, size=256, manifest=True,
                       with_metadata=True)  # fmt: skip
        ws = Workspace.create(root / "ws", "flips")
        t0 = time.perf_counter()
        ws.ingest([root / "photos" / "manifest.csv"])
        print(f"ingest of {6 * per_class} photos: {time.perf_counter() - t0:.1f} s")
        rng = np.random.default_rng(0)
        classes = ws.taxonomy.class_ids
        run_id, _ = ws.start_run("probe", {"benchmark": True})
        ws.write_predictions(
            run_id,
            [
                Prediction(pid, str(rng.choice(classes)), float(rng.random()))
                for pid in ws.photo_ids()
            ],
        )
        ws.finish_run(run_id, summary={"photos": 6 * per_class, "wall_seconds": 1.0})

        rows = []
        for name, opts in [
            ("cold: thumbnails made", ReportOptions()),
            ("warm: thumbnails reused", ReportOptions()),
            ("baseline: thumbnails embedded", ReportOptions(embed_thumbs=True)),
        ]:
            t0 = time.perf_counter()
            out = build_report(ws, root / f"{len(rows)}.html", opts)
            rows.append((name, time.perf_counter() - t0, out.stat().st_size / 2**20))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, seconds, mib in rows:
            print(f"{name:32s} {seconds:7.1f} s  {mib:7.1f} MiB of HTML")
        print(f"cold / warm time: {rows[0][1] / rows[1][1]:.1f}x; "
              f"embedded / linked HTML size: {rows[2][2] / rows[1][2]:.1f}x; "
              f"peak RSS {peak:.0f} MiB")  # fmt: skip
        ws.close()


if __name__ == "__main__":
    main()
