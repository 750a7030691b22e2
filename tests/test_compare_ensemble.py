"""compare (same splits, reuse, costs, energy) and the ensemble method."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.evaluation import energy as energy_mod
from naturelens.evaluation.compare import (
    CompareError,
    compare,
    latest_comparison,
    parse_method_specs,
    save_comparison,
)
from naturelens.evaluation.energy import energy_meter
from naturelens.evaluation.metrics import evaluate_predictions
from naturelens.evaluation.protocol import kshot_split
from naturelens.methods import METHODS, Method, make_method, run_method
from naturelens.methods.ensemble import Ensemble
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Prediction


class ColourCentroid(Method):
    """Nearest class centroid of the photos' mean colours: a small real classifier whose
    answers depend on the photos, so the tests measure something."""

    name = "colour"

    def __init__(self, side: int = 24):
        self.side = side

    def _features(self, photos):
        rows = []
        for pid in photos.ids:
            img = photos.workspace.open_image(pid, max_side=self.side).resize((self.side,) * 2)
            arr = np.asarray(img, dtype=np.float64) / 255
            rows.append(np.concatenate([arr.mean((0, 1)), arr.std((0, 1))]))
        return np.array(rows)

    def fit(self, photos, labels=None):
        x = self._features(photos)
        self.classes_ = sorted(set(labels))
        self.centroids_ = np.array([x[[lab == c for lab in labels]].mean(0) for c in self.classes_])
        return self

    def predict_iter(self, photos):
        for batch in photos.batches(16):
            x = self._features(batch)
            dist = np.linalg.norm(x[:, None] - self.centroids_[None], axis=-1)
            prob = np.exp(-dist * 10)
            prob /= prob.sum(1, keepdims=True)
            for pid, p in zip(batch.ids, prob, strict=True):
                scores = dict(zip(self.classes_, map(float, p), strict=True))
                best = self.classes_[int(p.argmax())]
                yield Prediction(pid, best, float(p.max()), scores, model="colour")


@pytest.fixture
def colour_method(monkeypatch):
    monkeypatch.setitem(METHODS, "colour", f"{__name__}:ColourCentroid")


# ---------------------------------------------------------------------------- specs
def test_method_specs():
    specs = parse_method_specs(
        "probe,zeroshot:model=clip-vit-b32:threshold=0.2,"
        "prompt:base_url=http://localhost:8000/v1:model=gpt-4o-mini:prompt=extended,"
        "ensemble:runs=[a, b]:voting=weighted"
    )
    assert [s.name for s in specs] == ["probe", "zeroshot", "prompt", "ensemble"]
    assert specs[1].params == {"model": "clip-vit-b32", "threshold": 0.2}
    assert specs[2].params["base_url"] == "http://localhost:8000/v1"
    assert specs[3].params == {"runs": ["a", "b"], "voting": "weighted"}
    assert specs[1].label == "zeroshot:model=clip-vit-b32:threshold=0.2"
    with pytest.raises(CompareError, match="unknown method 'nope'"):
        parse_method_specs("probe,nope")
    with pytest.raises(CompareError, match="KEY=VALUE"):
        parse_method_specs("probe:model")
    with pytest.raises(CompareError, match="no methods"):
        parse_method_specs(" , ")


# ---------------------------------------------------------------------------- compare
def test_compare_uses_the_same_splits_and_reuses_runs(labelled_workspace, tiny_root, colour_method):
    ws = labelled_workspace
    clip = tiny_model("clip", tiny_root)
    specs = parse_method_specs(f"colour,zeroshot:model={clip}:batch_size=16,ensemble")
    result = compare(ws, specs, shots=2, seeds=2)
    table = {row["method"]: row for row in result.table()}
    assert all(not row["error"] for row in table.values()), table
    gold = ws.labels()
    for seed in range(2):
        train, test = kshot_split(gold, 2, seed)
        runs = {row.method: row.runs[seed] for row in result.rows}
        for label, r in runs.items():
            # Every method predicted exactly the same test photos of this seed.
            assert ws.done_photo_ids(r.run_id) == set(test), label
            expected = evaluate_predictions(ws.predictions(r.run_id), gold, ws.taxonomy, test)
            assert r.accuracy == pytest.approx(expected["accuracy"])
            assert ws.run(r.run_id)["summary"]["accuracy"] == pytest.approx(r.accuracy)
        assert ws.run(runs["colour"].run_id)["params"]["train"] == train
        assert ws.run(runs[specs[1].label].run_id)["params"]["train"] == []
        # The ensemble voted over the other methods' runs of the same split.
        members = ws.run(runs["ensemble"].run_id)["params"]["method"]["runs"]
        assert members == [runs["colour"].run_id, runs[specs[1].label].run_id]
    assert table["colour"]["labels_used"] == 12
    assert table[specs[1].label]["labels_used"] == 0
    assert table["colour"]["accuracy"] > 0.6  # the synthetic classes differ in colour
    accs = [r.accuracy for r in result.rows[0].runs]
    assert table["colour"]["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
    for row in table.values():
        assert row["energy_wh"] > 0 and row["energy_source"]
        assert row["photos_per_second"] > 0 and row["cost_per_1000"] == 0
        assert row["reused"] == 0

    n_runs = len(ws.runs())
    again = compare(ws, specs, shots=2, seeds=2)
    assert len(ws.runs()) == n_runs  # nothing recomputed
    for row in again.table():
        assert row["reused"] == 2
        assert row["accuracy"] == pytest.approx(table[row["method"]]["accuracy"])
        assert row["energy_wh"] == pytest.approx(table[row["method"]]["energy_wh"])

    path = save_comparison(ws, again)
    assert path.exists() and path.read_text().startswith("method,seeds,labels_used")
    stored = latest_comparison(ws)
    assert stored["comparison_id"] == again.comparison_id
    assert [r["method"] for r in stored["table"]] == ["colour", specs[1].label, "ensemble"]


def test_holdout_protocol_and_failures_are_recorded(labelled_workspace, colour_method, tmp_path):
    ws = labelled_workspace
    errors = []
    specs = parse_method_specs(f"colour,zeroshot:model={tmp_path / 'missing-model'}")
    result = compare(ws, specs, seeds=1, test_fraction=0.5, on_error=lambda *a: errors.append(a))
    colour, broken = result.table()
    assert colour["seeds"] == 1 and not colour["error"]
    assert broken["seeds"] == 0 and broken["error"] and len(errors) == 1
    run = ws.run(result.rows[0].runs[0].run_id)
    assert run["params"]["holdout"] == 0.5
    assert len(run["params"]["train"]) == 24 and run["params"]["predict"] == 24
    with pytest.raises(CompareError, match="needs more than 8"):
        compare(ws, specs, shots=8)
    for bad, says in [({"shots": 0}, "--shots must be at least 1"),
                      ({"shots": -3}, "--shots must be at least 1"),
                      ({"test_fraction": 1.5}, "--test-fraction must be between 0 and 1")]:  # fmt: skip
        with pytest.raises(CompareError, match=says):
            compare(ws, specs, **bad)
    out = CliRunner().invoke(app, ["classify", str(ws.root), "--method", "colour", "--shots", "0"])
    assert out.exit_code == 2 and "--shots must be at least 1" in out.output


def test_energy_is_measured_from_rapl_counters(tmp_path, monkeypatch):
    zone = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a sub-zone inside the package: not counted twice
    for z, value in [(zone, 999_000_000), (sub, 5)]:
        z.mkdir()
        (z / "energy_uj").write_text(str(value))
        (z / "max_energy_range_uj").write_text("1000000000")
    monkeypatch.setattr(energy_mod, "RAPL_ROOT", tmp_path)
    with energy_meter() as energy:
        # 3 J of work, across the counter's wrap-around at 1000 J
        (zone / "energy_uj").write_text(str(2_000_000))
        (sub / "energy_uj").write_text(str(999_999_999))
    assert energy.wh == pytest.approx(3 / 3600)
    assert energy.measured and "RAPL" in energy.source

    monkeypatch.setattr(energy_mod, "RAPL_ROOT", tmp_path / "none")
    monkeypatch.setenv("NATURELENS_CPU_WATTS_PER_CORE", "7")
    with energy_meter() as estimate:
        pass
    assert not estimate.measured and "estimated" in estimate.source and "x 7 W" in estimate.source


def test_compare_cli(labelled_workspace, colour_method):
    root = labelled_workspace.root
    labelled_workspace.close()
    runner = CliRunner()
    out = runner.invoke(
        app, ["compare", str(root), "--methods", "colour,ensemble", "--shots", "2", "--seeds", "2"]
    )
    assert out.exit_code == 0, out.output
    assert "Saved to" in out.output and "energy:" in out.output and "colour" in out.output
    # A narrow terminal gets the quality table, then speed and cost, each within its width.
    assert "speed and cost" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    out = runner.invoke(
        app,
        ["compare", str(root), "-m", "colour,ensemble", "--shots", "2", "--seeds", "2", "--json"],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [r["reused"] for r in data["table"]] == [2, 2]
    out = runner.invoke(app, ["compare", str(root), "--methods", "colour,bogus"])
    assert out.exit_code != 0 and "unknown method 'bogus'" in out.output


# ---------------------------------------------------------------------------- ensemble
def _store(ws, method, preds, summary=None):
    run_id, _ = ws.start_run(method, {"case": len(ws.runs())})
    ws.write_predictions(run_id, preds)
    ws.finish_run(run_id, summary=summary or {})
    return run_id


@pytest.fixture
def three_runs(labelled_workspace):
    """Three stored runs over four photos, with a tie, a rejection and failures."""
    ws = labelled_workspace
    ids = ws.photo_ids()[:4]
    a, b, c, d = ids
    P = Prediction
    r1 = _store(ws, "probe", [
        P(a, "nature", 0.9, cost=0.001), P(b, "sport", 0.6), P(c, "nature", 0.5),
        P(d, None, status="failed", detail="truncated image"),
    ], {"accuracy": 0.9})  # fmt: skip
    r2 = _store(ws, "zeroshot", [
        P(a, "nature", 0.7, cost=0.002), P(b, "gastronomy", 0.9), P(c, "sport", 0.5),
        P(d, None, status="unparsed", detail="a cat"),
    ], {"accuracy": 0.5})  # fmt: skip
    r3 = _store(ws, "prompt", [
        P(a, "sport", 0.8), P(b, "gastronomy", 0.4), P(c, None, status="rejected"),
    ], {"accuracy": 0.3})  # fmt: skip
    return ws, ids, [r1, r2, r3]


def _ensemble(ws, ids, **params):
    run_id = run_method(ws, make_method("ensemble", **params), ids)
    return {p.photo_id: p for p in ws.predictions(run_id)}


def test_majority_vote_ties_and_photos_without_votes(three_runs):
    ws, (a, b, c, d), runs = three_runs
    out = _ensemble(ws, [a, b, c, d], runs=runs)
    assert (out[a].class_id, out[a].confidence) == ("nature", pytest.approx(2 / 3))
    assert out[a].cost == pytest.approx(0.003)  # the members' cost
    assert out[b].class_id == "gastronomy"
    # c: nature, sport and a rejection, one vote each; the equal confidences of nature and
    # sport tie again, so taxonomy order decides: nature comes before sport.
    assert out[c].class_id == "nature" and out[c].status == "ok"
    assert out[d].status == "failed"
    assert "truncated image" in out[d].detail and "no prediction" in out[d].detail
    assert out[a].scores == {"nature": pytest.approx(2 / 3), "sport": pytest.approx(1 / 3)}


def test_weighted_vote_uses_validation_accuracy(three_runs):
    ws, (a, b, c, d), runs = three_runs
    # Stored accuracies 0.9, 0.5, 0.3: b -> sport (0.9) beats gastronomy (0.5 + 0.3).
    out = _ensemble(ws, [b, c], runs=runs, voting="weighted")
    assert out[b].class_id == "sport"
    assert out[b].confidence == pytest.approx(0.9 / 1.7)
    # Validation on labelled photos given to fit: every run predicted a, b, c.
    gold = ws.labels()
    truth = [gold[a], gold[b], gold[c]]
    ens = Ensemble(runs=runs, voting="weighted").fit(_photoset(ws, [a, b, c]), truth)
    for run_id in runs:
        preds = {p.photo_id: p for p in ws.predictions(run_id)}
        right = sum(
            preds[p].status == "ok" and preds[p].class_id == g
            for p, g in zip([a, b, c], truth, strict=True)
        )
        assert ens.weights_[run_id] == pytest.approx(right / 3)


def _photoset(ws, ids):
    from naturelens.methods import PhotoSet

    return PhotoSet(ws, tuple(ids))


def test_ensemble_errors_and_latest(three_runs):
    ws, ids, runs = three_runs
    with pytest.raises(ValueError, match="no run 'nope'"):
        _ensemble(ws, ids, runs=["nope"])
    with pytest.raises(ValueError, match="voting must be"):
        _ensemble(ws, ids, runs=runs, voting="loudest")
    unscored = _store(ws, "hybrid", [Prediction(ids[0], "nature", 0.5)])
    with pytest.raises(ValueError, match="no stored accuracy"):
        _ensemble(ws, ids, runs=[*runs, unscored], voting="weighted")
    running, _ = ws.start_run("cluster", {})
    with pytest.raises(ValueError, match="running, not done"):
        _ensemble(ws, ids, runs=[running])
    latest = Ensemble().fit(_photoset(ws, []), []).runs_
    assert latest == [*runs, unscored]  # one per method, unfinished and ensemble runs left out


def test_ensemble_through_classify_cli(three_runs):
    ws, ids, runs = three_runs
    root = ws.root
    ws.close()
    out = CliRunner().invoke(
        app,
        ["classify", str(root), "--method", "ensemble", "--param", f"runs=[{runs[0]},{runs[1]}]",
         "--param", "voting=weighted"],
    )  # fmt: skip
    # Only 3 of the 48 photos have votes: the run is stored, and the command says it did not
    # do its job (exit code 1) in one line, as scripts need to know.
    assert out.exit_code == 1, out.output
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert "45 of 48 photos failed" in line
    ws = type(ws).open(root)
    run = ws.run()
    assert run["method"] == "ensemble" and run["params"]["method"]["runs"] == runs[:2]
    preds = {p.photo_id: p for p in ws.predictions(run["run_id"])}
    assert len(preds) == len(ws.photo_ids())  # one per photo, voted or failed
    assert preds[ids[1]].class_id == "sport"  # 0.9 beats 0.5
    assert sum(p.status == "failed" for p in preds.values()) == len(preds) - 3
    ws.close()
