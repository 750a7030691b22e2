"""Shared parts of the memory benchmarks: generated photos, child processes, the peak table.

Each measurement runs ``child`` (Python source) in a fresh process with its arguments;
the child prints its peak resident MiB and its seconds as the last two words.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def arguments(
    doc: str, size: int, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The benchmarks' common options, plus those ``extra`` adds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=size, help="side of the generated photos")
    if extra:
        extra(parser)
    return parser.parse_args()


def write_photos(folder: Path, count: int, size: int) -> None:
    """``count`` generated JPEGs of ``size`` px in ``folder``, in six visible classes."""
    from naturelens.testing.synthetic import synthetic_photo

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(count):
        synthetic_photo(i % 6, i, size=size).save(folder / f"{i:06d}.jpg", quality=85)
    print(f"generated {count} photos of {size}px in {time.perf_counter() - start:.0f} s")


def run_child(child: str, *args: object) -> tuple[float, float]:
    """Peak MiB and seconds of ``child`` run in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", child, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def peak_table(small: int, large: int, measure: Callable[[str, int], tuple[float, float]]) -> None:
    """Measure baseline and naturelens at ``small`` and ``large`` photos; print peaks and ratios."""
    print(f"{'code':<12}{'photos':>8}{'peak MiB':>10}{'seconds':>9}")
    peaks = {}
    for mode in ("baseline", "naturelens"):
        for n in (small, large):
            peak, seconds = measure(mode, n)
            peaks[mode, n] = peak
            print(f"{mode:<12}{n:>8}{peak:>10.0f}{seconds:>9.1f}")
    for mode in ("baseline", "naturelens"):
        ratio = peaks[mode, large] / peaks[mode, small]
        print(f"{mode}: peak at {large} / peak at {small} = {ratio:.2f}")
