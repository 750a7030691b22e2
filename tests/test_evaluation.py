"""Evaluation: every score checked against scikit-learn or a hand-computed case."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.evaluation import metrics as evaluation
from naturelens.evaluation.clusters import cluster_scores
from naturelens.evaluation.metrics import (
    NO_CLASS,
    EvaluationError,
    bootstrap_intervals,
    confusion_matrix,
    evaluate_predictions,
    evaluate_run,
    open_set_scores,
    scores_from_confusion,
)
from naturelens.taxonomy import load_taxonomy
from naturelens.workspace.core import Prediction

FLIPS = load_taxonomy("flips")
CES = load_taxonomy("ces11")


def noisy_predictions(n: int, seed: int, classes: list[str], accuracy: float = 0.6):
    rng = np.random.default_rng(seed)
    gold = list(rng.choice(classes[:-1], n))  # the last class is never gold
    pred = [g if rng.random() < accuracy else str(rng.choice([*classes, NO_CLASS])) for g in gold]
    return [str(g) for g in gold], pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_scikit_learn(seed):
    labels = ["a", "b", "c", "d", "e"]
    gold, pred = noisy_predictions(300, seed, labels)
    cm = confusion_matrix(gold, pred, labels)
    s = scores_from_confusion(cm)
    assert np.array_equal(cm, skm.confusion_matrix(gold, pred, labels=[*labels, NO_CLASS])[:5])
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))
    with pytest.warns(UserWarning):  # scikit-learn warns about the "(no class)" answers
        assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(gold, pred))
    assert s["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, labels=labels, average="macro"))
    assert s["weighted_f1"] == pytest.approx(
        skm.f1_score(gold, pred, labels=labels, average="weighted")
    )
    assert s["kappa"] == pytest.approx(skm.cohen_kappa_score(gold, pred))
    p, r, f, support = skm.precision_recall_fscore_support(
        gold, pred, labels=labels, zero_division=0
    )
    assert np.allclose(s["precision"], p)
    assert np.allclose(s["recall"], r)
    assert np.allclose(s["f1"], f)
    assert np.array_equal(s["support"], support)


def test_hand_computed_case():
    # gold a a a b b c ; predicted a a b b (none) a
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", NO_CLASS, "a"]
    s = scores_from_confusion(confusion_matrix(gold, pred, ["a", "b", "c"]))
    assert s["accuracy"] == pytest.approx(3 / 6)
    # recall a 2/3, b 1/2, c 0 -> balanced (2/3 + 1/2 + 0) / 3
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    # precision a 2/3, b 1/2, c 0 ; F1 a 2/3, b 1/2, c 0
    assert list(s["precision"]) == pytest.approx([2 / 3, 1 / 2, 0])
    assert list(s["f1"]) == pytest.approx([2 / 3, 1 / 2, 0])
    assert s["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert s["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 6)
    # kappa: po = 0.5; pe = (3*3 + 2*2 + 1*0) / 36
    pe = (3 * 3 + 2 * 2 + 0) / 36
    assert s["kappa"] == pytest.approx((0.5 - pe) / (1 - pe))
    assert int(s["no_class"]) == 1


def test_bootstrap_matches_a_plain_loop_and_contains_the_estimate(monkeypatch):
    labels = ["a", "b", "c"]
    gold, pred = noisy_predictions(120, 5, labels, accuracy=0.7)
    got = bootstrap_intervals(gold, pred, labels, n_resamples=200, seed=3)
    # The same resamples drawn one at a time, scored by scikit-learn.
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(gold), size=(200, len(gold)))
    g, p = np.array(gold), np.array(pred)
    accs = [skm.accuracy_score(g[i], p[i]) for i in idx]
    assert got["accuracy"] == pytest.approx(tuple(np.percentile(accs, [2.5, 97.5])))
    point = scores_from_confusion(confusion_matrix(gold, pred, labels))
    for name in evaluation.HEADLINE:
        lo, hi = got[name]
        assert lo <= float(point[name]) <= hi, name
        assert lo < hi
    # Computing in small blocks of resamples gives the same intervals.
    monkeypatch.setattr(evaluation, "_CHUNK_CELLS", 1000)
    assert bootstrap_intervals(gold, pred, labels, n_resamples=200, seed=3) == got
    assert bootstrap_intervals(gold, pred, labels, n_resamples=200, seed=4) != got


def test_open_set_rejection_scores_by_hand():
    gold = ["not_relevant", "not_relevant", "nature", "nature", "sport"]
    rejected = [True, False, True, False, False]
    s = open_set_scores(gold, rejected, "not_relevant")
    assert s["rejection_precision"] == pytest.approx(1 / 2)
    assert s["rejection_recall"] == pytest.approx(1 / 2)
    assert s["correctly_rejected"] == 1


def test_evaluate_predictions_counts_failures_as_wrong_and_scores_open_set():
    ids = [f"p{i}" for i in range(6)]
    gold = dict(
        zip(
            ids, ["nature", "nature", "not_relevant", "not_relevant", "sport", "sport"], strict=True
        )
    )
    preds = [
        Prediction("p0", "nature", 0.9),
        Prediction("p1", None, status="failed", detail="truncated image"),
        Prediction("p2", "not_relevant", 0.8, status="rejected"),
        Prediction("p3", "nature", 0.6),
        Prediction("p4", None, status="unparsed", detail="a dog"),
        Prediction("p5", "sport", 0.7),
        Prediction("unlabelled", "sport", 0.7),
    ]
    r = evaluate_predictions(preds, gold, CES, n_resamples=50)
    assert r["photos"] == 6
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["counted_wrong"] == 2 and "2 photo(s)" in r["note"]
    assert r["statuses"] == {"ok": 3, "rejected": 1, "unparsed": 1, "failed": 1}
    assert r["confusion"]["columns"][-1] == NO_CLASS
    row = r["confusion"]["rows"].index("sport")
    assert r["confusion"]["matrix"][row][-1] == 1  # the unparsed sport photo
    o = r["open_set"]
    assert (o["rejection_precision"], o["rejection_recall"]) == (1.0, 0.5)
    # Only the chosen photos are scored.
    assert evaluate_predictions(preds, gold, CES, photo_ids=["p0", "p1"])["accuracy"] == 0.5


def test_cluster_runs_get_hungarian_nmi_ari():
    gold = {f"p{i}": c for i, c in enumerate(["nature"] * 4 + ["sport"] * 4)}
    clusters = [1, 1, 1, 0, 0, 0, 0, 1]
    # Cluster runs record the cluster in the detail text and in the scores.
    preds = [
        Prediction(pid, "nature", 0.5, detail=f"cluster={c} named by majority")
        if i % 2
        else Prediction(pid, None, status="unparsed", scores={"cluster": float(c)})
        for i, (pid, c) in enumerate(zip(gold, clusters, strict=True))
    ]
    r = evaluate_predictions(preds, gold, FLIPS, n_resamples=0)
    expected = cluster_scores(list(gold.values()), clusters)
    assert r["clusters"]["accuracy"] == pytest.approx(6 / 8) == expected["accuracy"]
    assert r["clusters"]["nmi"] == pytest.approx(
        skm.normalized_mutual_info_score(list(gold.values()), clusters)
    )
    assert r["clusters"]["ari"] == pytest.approx(
        skm.adjusted_rand_score(list(gold.values()), clusters)
    )


def test_evaluate_run_and_cli(labelled_workspace, tmp_path):
    ws = labelled_workspace
    gold = ws.labels()
    ids = sorted(gold)
    run_id, _ = ws.start_run("probe", {"case": "eval"})
    classes = ws.taxonomy.class_ids
    preds = [
        Prediction(pid, gold[pid] if i % 3 else classes[(classes.index(gold[pid]) + 1) % 6], 0.7)
        for i, pid in enumerate(ids)
    ]
    preds[0] = Prediction(ids[0], None, status="failed", detail="unreadable image")
    ws.write_predictions(run_id, preds)
    ws.finish_run(run_id)
    r = evaluate_run(ws, n_resamples=100)
    assert r["run_id"] == run_id
    y_true = [gold[p] for p in ids]
    y_pred = [p.class_id or NO_CLASS for p in preds]
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert r["counted_wrong"] == 1
    ws.close()

    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", str(ws.root), "--json", "--resamples", "100"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["accuracy"] == pytest.approx(r["accuracy"])
    assert data["intervals"] == r["intervals"]
    out = runner.invoke(app, ["evaluate", str(ws.root), "--run", run_id])
    assert out.exit_code == 0, out.output
    assert "count as wrong" in out.output and "Confusion matrix" in out.output
    out = runner.invoke(app, ["evaluate", str(ws.root), "--run", "nope"])
    assert out.exit_code != 0 and "no run 'nope'" in out.output


def test_a_run_without_labelled_photos_says_what_to_do(labelled_workspace):
    ws = labelled_workspace
    run_id, _ = ws.start_run("zeroshot", {})
    ws.write_predictions(run_id, [Prediction("not-a-labelled-photo", "nature", 0.5)])
    ws.finish_run(run_id)
    with pytest.raises(EvaluationError, match="no predicted photo has a gold label"):
        evaluate_run(ws, run_id)
