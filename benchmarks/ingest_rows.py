"""Manifest rows per second when the rows point to files already seen in the ingest.

A manifest often lists one photo under several ids (reposts, albums). The baseline is the
ingest as it was: every row's file read, hashed and fully decoded again, and rows written
with one ``executemany`` statement per row. naturelens now recognises a file it already
read by its identity and change stamp (one ``stat``), and writes a batch's rows in one
statement through Arrow. The baseline runs on fewer rows: at its speed 100,000 rows take
about half an hour.

    python benchmarks/ingest_rows.py [--rows 100000] [--baseline-rows 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

import naturelens.workspace.core as core
from naturelens.sources import ingest as reading
from naturelens.workspace.core import Workspace


def _manifest(folder: Path, rows: int, files: list[Path]) -> Path:
    path = folder / f"manifest-{rows}.csv"
    with open(path, "w") as fh:
        fh.write("id,path\n")
        for i in range(rows):
            fh.write(f"{i},{files[i % len(files)]}\n")
    return path


def _executemany(db, verb, rows, tail=""):
    if rows:
        marks = ",".join("?" * len(rows[0]))
        db.executemany(f"{verb} VALUES ({marks}) {tail}", rows)


class _Forgetful(reading.SeenFiles):
    def get(self, key):
        return None


def _run(folder: Path, name: str, manifest: Path, baseline: bool) -> tuple[int, float]:
    saved = core._insert, reading.SeenFiles
    if baseline:
        core._insert, reading.SeenFiles = _executemany, _Forgetful
    try:
        ws = Workspace.create(folder / name, "flips")
        start = time.perf_counter()
        report = ws.ingest([manifest])
        seconds = time.perf_counter() - start
        ws.close()
    finally:
        core._insert, reading.SeenFiles = saved
    assert report.failed == 0
    return report.seen, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = []
        for i in range(args.files):
            path = folder / f"photo-{i}.jpg"
            Image.new("RGB", (1024, 768), (i * 5 % 256, 90, 160)).save(path, "JPEG")
            files.append(path)
        print("| code | rows | seconds | rows/s |")
        print("| --- | ---: | ---: | ---: |")
        results = {}
        for label, rows, baseline in (
            ("baseline: read, hash, decode every row; executemany", args.baseline_rows, True),
            ("naturelens: seen files by stat; Arrow inserts", args.rows, False),
        ):
            seen, seconds = _run(folder, label[:4], _manifest(folder, rows, files), baseline)
            results[baseline] = seen / seconds
            print(f"| {label} | {seen:,} | {seconds:.1f} | {seen / seconds:,.0f} |")
        print(f"\nRatio (rows/s): {results[False] / results[True]:.1f}x")


if __name__ == "__main__":
    main()
