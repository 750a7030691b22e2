"""Honest few-shot numbers: baselines and collapse, probe defaults, step-based schedules,
bulk prediction storage, ensembles and cluster statuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naturelens.evaluation.metrics import baseline_scores, evaluate_predictions
from naturelens.methods.probe import FEW_SHOT_C, make_classifier
from naturelens.methods.training import schedule_epochs, warmup_cosine
from naturelens.taxonomy import load_taxonomy
from naturelens.workspace.core import Prediction, Workspace

FLIPS = load_taxonomy("flips")


# ---------------------------------------------------------------------------- metrics
def test_a_run_answering_the_majority_class_is_flagged_with_its_baseline():
    gold = {f"p{i}": c for i, c in enumerate(["nature"] * 6 + ["sport"] * 2 + ["gastronomy"] * 2)}
    preds = [Prediction(pid, "nature", 0.9) for pid in gold]
    r = evaluate_predictions(preds, gold, FLIPS, n_resamples=0)
    assert r["accuracy"] == pytest.approx(0.6) == r["majority_baseline"]
    assert r["collapsed"] and r["top_class_share"] == 1.0
    assert r["balanced_accuracy"] == pytest.approx(1 / 3)


def test_a_run_that_names_every_class_is_not_flagged():
    s = baseline_scores(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert s == {"majority_baseline": 0.5, "top_class_share": 0.5, "collapsed": False}
    # a single gold class cannot collapse
    assert not baseline_scores(["a", "a"], ["a", "a"])["collapsed"]


def test_a_cluster_run_without_naming_reports_cluster_scores_not_zero_accuracy():
    gold = {f"p{i}": c for i, c in enumerate(["nature"] * 4 + ["sport"] * 4)}
    clusters = [0, 0, 0, 0, 1, 1, 1, -1]
    preds = [
        Prediction(pid, None, status="noise" if c < 0 else "unnamed", cluster=c)
        for pid, c in zip(gold, clusters, strict=True)
    ]
    r = evaluate_predictions(preds, gold, FLIPS, n_resamples=0)
    assert r["accuracy"] is None and r["macro_f1"] is None
    assert r["clusters"]["photos"] == 8 and r["clusters"]["accuracy"] == pytest.approx(7 / 8)
    assert r["statuses"]["noise"] == 1 and r["statuses"]["unnamed"] == 7


def test_training_photos_of_ensemble_members_are_not_scored():
    gold = {"a": "nature", "b": "sport", "c": "sport"}
    preds = [
        Prediction("a", "nature", 1.0),
        Prediction("b", "sport", 1.0),
        Prediction("c", None, status="training", detail="training photo of run-1"),
    ]
    r = evaluate_predictions(preds, gold, FLIPS, n_resamples=0)
    assert r["photos"] == 2 and r["accuracy"] == 1.0 and r["counted_wrong"] == 0


# ---------------------------------------------------------------------------- probe
def _blobs(per_class: int, seed: int = 0, dim: int = 32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    X = np.concatenate([c + 0.3 * rng.normal(size=(per_class, dim)) for c in centres])
    y = np.repeat(["a", "b", "c"], per_class)
    return X, y


def test_one_shot_probe_uses_the_fixed_c_and_no_standardisation():
    X, y = _blobs(1)
    clf = make_classifier("logreg", "auto", n_train=3, min_class_photos=1).fit(X, y)
    assert [type(s).__name__ for s in clf] == ["Normalizer", "LogisticRegression"]
    assert clf[-1].C == FEW_SHOT_C
    # every training photo is classified as its own class
    assert list(clf.predict(X)) == ["a", "b", "c"]


def test_probe_chooses_c_by_cross_validation_when_labels_allow():
    X, y = _blobs(6)
    clf = make_classifier("logreg", "auto", n_train=18, min_class_photos=6).fit(X, y)
    assert type(clf[-1]).__name__ == "LogisticRegressionCV"
    assert clf[-1].cv.n_splits == 5
    fixed = make_classifier("logreg", 0.5, n_train=18, min_class_photos=6)
    assert fixed[-1].C == 0.5


# ---------------------------------------------------------------------------- finetune
def test_schedule_has_a_floor_in_optimiser_steps():
    # 24 photos, batch 16: 2 steps an epoch, so 100 steps need 50 epochs
    assert schedule_epochs(15, 24, 16, 100) == 50
    # plenty of photos: the epochs given already make the steps
    assert schedule_epochs(15, 1600, 16, 100) == 15


def test_warmup_then_cosine():
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] < 0.05


# ---------------------------------------------------------------------------- storage
def test_bulk_storage_keeps_every_field_and_the_last_of_a_repeated_photo(tmp_path):
    with Workspace.create(tmp_path / "ws") as ws:
        run_id, _ = ws.start_run("probe", {})
        first = Prediction("a", "nature", 0.4, scores={"nature": 0.4, "sport": 0.6})
        n = ws.write_predictions(
            run_id,
            [
                first,
                Prediction(
                    "b", None, status="failed", detail="no embedding", tokens_in=3, cost=0.5
                ),
                Prediction("a", "sport", 0.6, scores={"sport": 0.6}, cluster=2),
            ],
        )
        assert n == 2
        got = {p.photo_id: p for p in ws.predictions(run_id)}
        assert got["a"].class_id == "sport" and got["a"].cluster == 2
        assert got["a"].scores == {"sport": 0.6}
        assert got["b"].status == "failed" and got["b"].detail == "no embedding"
        assert got["b"].tokens_in == 3 and got["b"].cost == 0.5
        # writing again replaces, it does not duplicate
        ws.write_predictions(run_id, [first])
        again = {p.photo_id: p for p in ws.predictions(run_id)}
        assert len(again) == 2 and again["a"].class_id == "nature"
