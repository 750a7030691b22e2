"""Resolving model names to cards: re-reading every card file per lookup (as before the
registry was cached) against the cached registry, in one run.

    PYTHONPATH=src python benchmarks/card_resolution.py [--lookups 50]

A command resolves a name several times on its way to a forward pass (the method, the
embedding store key, the loader, the cost ledger); each lookup used to parse every YAML
card file shipped and in the workspace.
"""

from __future__ import annotations

import argparse
import time

from naturelens.models import cards

NAMES = ["dinov2-small", "clip-vit-b32", "siglip-base", "efficientnet-lite0", "convnext-tiny"]


def lookups(n: int, reread: bool) -> float:
    """Seconds for ``n`` resolutions; with ``reread`` every card file is parsed each time."""
    started = time.perf_counter()
    for i in range(n):
        if reread:
            cards._shipped_cards.cache_clear()
            cards._registry.cache_clear()
            cards._resolve.cache_clear()
        cards.resolve(NAMES[i % len(NAMES)], kind="vision")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=50)
    args = parser.parse_args()
    lookups(5, reread=False)  # imports and first parse outside the timings
    before = lookups(args.lookups, reread=True)
    after = lookups(args.lookups, reread=False)
    print(f"{args.lookups} lookups, re-reading card files: {before * 1e3:8.1f} ms")
    print(f"{args.lookups} lookups, cached registry:       {after * 1e3:8.1f} ms")
    print(f"ratio: {before / max(after, 1e-9):.0f}x")


if __name__ == "__main__":
    main()
