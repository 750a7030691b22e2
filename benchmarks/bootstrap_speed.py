"""Bootstrap intervals: resamples scored together vs. one scikit-learn call per resample.

Both sides draw the same resample indices (same seed), score accuracy, balanced accuracy,
macro F1, weighted F1 and Cohen's kappa on each, and take the 2.5 / 97.5 percentiles; the
script checks that they agree and prints the time of each and the ratio.

    .venv/bin/python benchmarks/bootstrap_speed.py --photos 5000 --resamples 1000
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn import metrics as skm

from naturelens.evaluation.metrics import NO_CLASS, bootstrap_intervals


def baseline(gold, pred, labels, resamples, seed):
    """The usual research-script loop: index, then call scikit-learn five times."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gold), size=(resamples, len(gold)))
    g, p = np.array(gold), np.array(pred)
    values = {k: [] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "kappa")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in idx:
            gi, pi = g[i], p[i]
            values["accuracy"].append(skm.accuracy_score(gi, pi))
            values["balanced_accuracy"].append(skm.balanced_accuracy_score(gi, pi))
            # The label set of each resample, as scikit-learn's default would take it.
            present = sorted((set(gi) | set(pi)) - {NO_CLASS})
            values["macro_f1"].append(skm.f1_score(gi, pi, labels=present, average="macro"))
            values["weighted_f1"].append(skm.f1_score(gi, pi, labels=present, average="weighted"))
            values["kappa"].append(skm.cohen_kappa_score(gi, pi))
    return {k: tuple(np.percentile(v, [2.5, 97.5])) for k, v in values.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=5000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=6)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = [f"class{i}" for i in range(args.classes)]
    gold = [str(c) for c in rng.choice(labels, args.photos)]
    pred = [g if rng.random() < 0.8 else str(rng.choice([*labels, NO_CLASS])) for g in gold]

    t0 = time.perf_counter()
    ref = baseline(gold, pred, labels, args.resamples, seed=1)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = bootstrap_intervals(gold, pred, labels, n_resamples=args.resamples, seed=1)
    t_ours = time.perf_counter() - t0
    for k in ref:
        assert np.allclose(ref[k], ours[k]), (k, ref[k], ours[k])
    print(f"{args.photos} photos, {args.resamples} resamples, {args.classes} classes")
    print(f"baseline (scikit-learn per resample): {t_base:8.2f} s")
    print(f"naturelens (stacked confusion matrices): {t_ours:5.2f} s")
    print(f"speed-up: {t_base / t_ours:.1f}x; intervals identical: yes")


if __name__ == "__main__":
    main()
