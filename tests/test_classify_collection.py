"""Classify a whole collection: every photo gets a prediction, the run carries an accuracy
estimate, confidences are calibrated and prediction sets keep their coverage."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from naturelens.classify import classify_collection
from naturelens.cli import app
from naturelens.evaluation.calibration import CalibrationError, PredictionSets, set_report
from naturelens.testing.synthetic import make_photo_set, synthetic_photo
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace import Workspace

runner = CliRunner()


@pytest.fixture
def mixed_workspace(tmp_path, photo_set):
    """8 labelled photos per FLIPS class plus 12 unlabelled photos."""
    import shutil

    shutil.copytree(photo_set, tmp_path / "labelled")
    loose = tmp_path / "unlabelled"
    loose.mkdir()
    for i in range(12):
        synthetic_photo(i % 6, 900 + i, size=64).save(loose / f"u{i}.jpg")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "labelled"])
    ws.ingest([loose], labels_from_folders=False)
    ws.close()
    return tmp_path / "ws"


def test_kshot_classify_predicts_every_photo_and_stores_an_estimate(mixed_workspace, tiny_root):
    model = str(tiny_model("dinov2", tiny_root))
    result = runner.invoke(
        app,
        [
            "classify",
            str(mixed_workspace),
            "--method",
            "probe",
            "--model",
            model,
            "--shots",
            "2",
            "--seeds",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2-shot accuracy" in result.output and "majority-class baseline" in result.output
    with Workspace.open(mixed_workspace) as ws:
        run = ws.run()  # the latest finished run is the collection run, not a k-shot draw
        assert run["params"]["purpose"] == "collection"
        train = set(run["params"]["train"])
        assert len(train) == 12  # 2 per class
        predicted = {p.photo_id for p in ws.predictions(run["run_id"])}
        everything = set(ws.photo_ids())
        assert predicted == everything - train  # every photo not trained on, each once
        assert set(ws.photo_ids(labelled=False)) <= predicted
        est = run["summary"]["estimate"]
        assert est["splits"] == 3 and len(est["evaluation_runs"]) == 3
        assert 0 <= est["accuracy"] <= 1 and est["accuracy_sd"] is not None
        for key in ("macro_f1", "balanced_accuracy", "majority_baseline"):
            assert est[key] is not None
        evaluation = [ws.run(r) for r in est["evaluation_runs"]]
        assert all(r["params"]["purpose"] == "evaluation" for r in evaluation)
        assert len({json.dumps(r["params"]["train"]) for r in evaluation}) == 3
    out = mixed_workspace / "all.csv"
    result = runner.invoke(app, ["export", str(mixed_workspace), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(everything)
    assert len({r["photo_id"] for r in rows}) == len(everything)
    assert sum(r["status"] == "labelled" for r in rows) == len(train)
    html = mixed_workspace / "report.html"
    result = runner.invoke(app, ["report", str(mixed_workspace), "-o", str(html)])
    assert result.exit_code == 0, result.output
    page = html.read_text(encoding="utf-8")
    assert "Accuracy estimate" in page and "2-shot" in page
    if est.get("calibration"):
        assert "Reliability diagram" in page


def test_runs_can_be_listed_shown_tagged_and_removed(mixed_workspace, tiny_root):
    model = str(tiny_model("dinov2", tiny_root))
    result = runner.invoke(
        app, ["classify", str(mixed_workspace), "--method", "probe", "--model", model]
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["runs", "list", str(mixed_workspace), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["purpose"] for r in rows] == ["collection"]
    everything = json.loads(
        runner.invoke(app, ["runs", "list", str(mixed_workspace), "--all", "--json"]).stdout
    )
    assert len(everything) == 6  # 5 cross-validation folds and the collection run
    run_id = rows[0]["run_id"]
    assert runner.invoke(app, ["runs", "tag", str(mixed_workspace), run_id, "final"]).exit_code == 0
    shown = runner.invoke(app, ["runs", "show", str(mixed_workspace), "final", "--json"])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["run_id"] == run_id and record["tags"] == ["final"]
    assert record["summary"]["estimate"]["protocol"] == "5-fold cross-validation"
    folder = record["summary"]["model_dir"]
    removed = runner.invoke(app, ["runs", "rm", str(mixed_workspace), "final", "--yes"])
    assert removed.exit_code == 0, removed.output
    with Workspace.open(mixed_workspace) as ws:
        assert run_id not in {r["run_id"] for r in ws.runs()}
        assert ws.predictions(run_id) == []
    assert not (mixed_workspace / "models" / folder).exists()
    missing = runner.invoke(app, ["runs", "show", str(mixed_workspace), "final"])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_bad_coverage_and_too_few_labels_are_one_line_errors(mixed_workspace, tiny_root):
    model = str(tiny_model("dinov2", tiny_root))
    for value in ("0", "1", "1.5", "-0.2"):
        result = runner.invoke(
            app,
            [
                "classify",
                str(mixed_workspace),
                "--method",
                "probe",
                "--model",
                model,
                "--coverage",
                value,
            ],
        )
        assert result.exit_code == 2, result.output
        assert "coverage must be between 0 and 1" in result.output
        assert "Traceback" not in result.output
    # 6 shots of 8 leave 2 held-out photos per class: 12, too few to calibrate sets on.
    result = runner.invoke(
        app,
        [
            "classify",
            str(mixed_workspace),
            "--method",
            "probe",
            "--model",
            model,
            "--shots",
            "6",
            "--seeds",
            "1",
            "--coverage",
            "0.9",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "held-out labelled" in result.output and "Traceback" not in result.output


def test_a_class_without_labels_is_named(tmp_path, tiny_root):
    make_photo_set(tmp_path / "photos", "flips", per_class=4, size=48)
    import shutil

    shutil.rmtree(tmp_path / "photos" / "Sport")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photos"])
    ws.close()
    model = str(tiny_model("dinov2", tiny_root))
    result = runner.invoke(
        app, ["classify", str(tmp_path / "ws"), "--method", "probe", "--model", model]
    )
    assert result.exit_code == 0, result.output
    assert "no labelled photo of sport" in " ".join(result.output.split())


def _blend_photos(root, per_class: int, seed: int) -> None:
    """Photos of 4 classes, each blended with another class's scene: classes overlap, so a
    probe is unsure of some photos and overconfident if left uncalibrated."""
    rng = np.random.default_rng(seed)
    names = ["Nature", "Sport", "Gastronomy", "Urban-Rural"]
    index = {"Nature": 0, "Sport": 1, "Gastronomy": 2, "Urban-Rural": 3}
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            own = synthetic_photo(index[name], seed * 1000 + n, size=96)
            other = synthetic_photo(int(rng.integers(0, 4)), seed * 1000 + n + 500, size=96)
            Image.blend(own, other, float(rng.uniform(0.25, 0.5))).save(folder / f"{n}.jpg")


@pytest.mark.slow
def test_calibration_lowers_ece_and_sets_reach_coverage_on_real_features(tmp_path):
    from naturelens.methods import PhotoSet

    _blend_photos(tmp_path / "photos", per_class=60, seed=3)
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photos"])
    gold = ws.labels()
    assert len(gold) == 240
    result = classify_collection(
        # A weakly regularised probe is overconfident on overlapping classes: something to
        # calibrate.
        ws,
        "probe",
        {"model": "efficientnet-lite0", "C": 1000.0},
        shots=None,
        coverage=0.9,
    )
    est = result.estimate
    cal = est["calibration"]
    # Cross-fitted on 240 out-of-fold predictions: each half is scored by a fit on the other.
    assert cal["photos"] == 240
    # Calibration lowers a miscalibration worth fixing, and never makes a good one bad.
    assert cal["ece_calibrated"] < cal["ece_raw"] or cal["ece_raw"] < 0.03, cal
    assert cal["ece_calibrated"] < 0.1, cal
    sets = est["prediction_sets"]
    # 240 held-out photos: the binomial sd of an empirical coverage of 0.9 is about 0.02.
    assert abs(sets["coverage"] - 0.9) < 0.06, sets
    assert 0.0 < sets["mean_size"] < 4.0  # LAC sets may be empty: "not sure"
    # Fitted on the first k-shot halves directly: coverage on the other held-out photos.
    ids = sorted(gold)
    from naturelens.methods import make_method

    probe = make_method("probe", model="efficientnet-lite0").fit(
        PhotoSet(ws, tuple(ids[::3])), [gold[i] for i in ids[::3]]
    )
    rest = [i for i in ids if i not in set(ids[::3])]
    proba = probe.predict_proba(PhotoSet(ws, tuple(rest)))
    half = len(rest) // 2
    fitted = PredictionSets(0.9).fit(proba[:half], [gold[i] for i in rest[:half]], probe.classes_)
    report = set_report(fitted.predict(proba[half:]), [gold[i] for i in rest[half:]])
    assert abs(report["coverage"] - 0.9) < 0.08, report
    with pytest.raises(CalibrationError):
        PredictionSets(0.99).fit(proba[:30], [gold[i] for i in rest[:30]], probe.classes_)
    ws.close()


def test_a_model_that_fails_to_load_leaves_no_run(mixed_workspace, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    result = runner.invoke(
        app,
        ["classify", str(mixed_workspace), "--method", "zeroshot", "--model", str(broken)],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    with Workspace.open(mixed_workspace) as ws:
        assert ws.runs() == []
