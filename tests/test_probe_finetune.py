"""probe, finetune and contrastive end to end through the CLI, and their building blocks."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.methods import make_method
from naturelens.methods.base import PhotoSet, RunContext
from naturelens.methods.contrastive import contrastive_loss
from naturelens.methods.saving import fit_or_load, load_model_dir, model_dir_for
from naturelens.methods.training import (
    balanced_order,
    colour_jitter,
    random_resized_crop,
    stratified_split,
)
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Workspace

runner = CliRunner()


def classify(ws_root, *args):
    result = runner.invoke(app, ["classify", str(ws_root), *args])
    assert result.exit_code == 0, result.output
    return result.output


def kshot_runs(ws_root, method):
    with Workspace.open(ws_root) as ws:
        # The k-shot draws' evaluation runs (classify also makes one collection run).
        runs = [
            r
            for r in ws.runs(method)
            if r["status"] == "done" and r["params"].get("purpose") == "evaluation"
        ]
        return runs, {r["run_id"]: ws.predictions(r["run_id"]) for r in runs}


@pytest.fixture
def ws_root(labelled_workspace):
    labelled_workspace.close()
    return labelled_workspace.root


@pytest.mark.parametrize("classifier", ["logreg", "knn", "ncm"])
def test_probe_kshot_and_predict_from_saved_model(ws_root, tiny_root, classifier):
    model = str(tiny_model("dinov2", tiny_root))
    out = classify(
        ws_root,
        "--method",
        "probe",
        "--model",
        model,
        "--shots",
        "2",
        "--seeds",
        "2",
        "--param",
        f"classifier={classifier}",
    )
    assert "probe 2-shot accuracy" in out and "over 2 seed(s)" in out
    runs, preds = kshot_runs(ws_root, "probe")
    assert len(runs) == 2
    for run in runs:
        assert len(run["params"]["train"]) == 12  # 2 photos x 6 classes
        assert run["summary"]["test_photos"] == 36 and len(preds[run["run_id"]]) == 36
        assert all(p.status == "ok" and p.scores for p in preds[run["run_id"]])
    models = sorted((ws_root / "models").iterdir())
    assert len(models) == 2
    info = json.loads((models[0] / "method.json").read_text())
    assert info["method"] == "probe" and info["params"]["classifier"] == classifier
    # the saved folder, applied to every photo, repeats the run's predictions
    result = runner.invoke(
        app, ["predict", str(ws_root), "--model-dir", str(models[0]), "--photos", "all"]
    )
    assert result.exit_code == 0, result.output
    with Workspace.open(ws_root) as ws:
        latest = ws.run()
        assert latest["method"] == "probe" and latest["summary"]["photos"] == 48
        again = {p.photo_id: p.class_id for p in ws.predictions(latest["run_id"])}
        original = next(r for r in runs if _model_dir_name(ws, r) == models[0].name)
    for p in preds[original["run_id"]]:
        assert again[p.photo_id] == p.class_id


def _model_dir_name(ws, run):
    """The model folder a k-shot run's fit saved (named from its parameters and photos)."""
    method = make_method(run["method"], **run["params"]["method"])
    return model_dir_for(ws, method, run["params"]["train"]).name


def test_probe_with_real_efficientnet_features_beats_chance(ws_root):
    classify(
        ws_root,
        "--method",
        "probe",
        "--model",
        "efficientnet-lite0",
        "--shots",
        "3",
        "--seeds",
        "2",
    )
    runs, _ = kshot_runs(ws_root, "probe")
    accuracies = [r["summary"]["accuracy"] for r in runs]
    # six classes: chance is 1/6
    assert len(accuracies) == 2 and np.mean(accuracies) >= 0.6, accuracies


@pytest.mark.parametrize(
    ("kind", "mode"),
    [("dinov2", "head"), ("dinov2-registers", "last"), ("dinov2", "lora"), ("clip", "lora")],
)
def test_finetune_modes_end_to_end(ws_root, tiny_root, kind, mode):
    model = str(tiny_model(kind, tiny_root))
    out = classify(
        ws_root,
        "--method",
        "finetune",
        "--model",
        model,
        "--shots",
        "4",
        "--seeds",
        "1",
        "--param",
        f"mode={mode}",
        "--param",
        "epochs=3",
        "--param",
        "min_steps=1",
        "--param",
        "min_val_photos=1",
        "--param",
        "batch_size=8",
        "--param",
        "blocks=1",
    )
    assert "finetune 4-shot accuracy" in out
    runs, preds = kshot_runs(ws_root, "finetune")
    (run,) = runs
    test_preds = preds[run["run_id"]]
    assert len(test_preds) == 24 and all(p.status == "ok" for p in test_preds)
    (folder,) = (ws_root / "models").iterdir()
    info = json.loads((folder / "method.json").read_text())
    assert info["params"]["mode"] == mode and info["n_train"] + info["n_val"] == 24
    assert 1 <= len(info["history"]) <= 3 and "val_loss" in info["history"][0]
    # Only the trained parts are saved: the head, plus the last block or the adapters.
    from safetensors.torch import load_file

    names = set(load_file(folder / "weights.safetensors"))
    assert {"head.weight", "head.bias"} <= names
    if mode == "head":
        assert names == {"head.weight", "head.bias"}
    elif mode == "lora":
        assert any("lora_A" in n for n in names) and all(
            "lora_" in n or n.startswith("head.") for n in names
        )
    else:
        assert any(".1." in n for n in names) and not any(".0." in n for n in names)
    # Reloaded from its folder, the model predicts what it predicted in the run.
    with Workspace.open(ws_root) as ws:
        loaded = load_model_dir(folder)
        test_ids = tuple(p.photo_id for p in test_preds)
        again = {p.photo_id: p for p in loaded.predict_iter(PhotoSet(ws, test_ids))}
    for p in test_preds:
        assert again[p.photo_id].class_id == p.class_id
        assert again[p.photo_id].confidence == pytest.approx(p.confidence, abs=1e-3)


def test_finetune_learns_on_real_weights_and_reuses_a_saved_fit(labelled_workspace):
    ws = labelled_workspace
    labels = ws.labels()
    ids = sorted(labels)
    train = ids[::2]
    test = ids[1::2]
    params = {
        "model": "efficientnet-lite0",
        "mode": "head",
        "epochs": 4,
        "batch_size": 8,
        "head_lr": 3e-3,
    }
    photos, train_labels = PhotoSet(ws, tuple(train)), [labels[i] for i in train]
    method = fit_or_load(make_method("finetune", **params), photos, train_labels, RunContext(ws))
    predicted = method.predict(PhotoSet(ws, tuple(test)))
    accuracy = np.mean([p == labels[i] for p, i in zip(predicted, test, strict=True)])
    assert accuracy >= 0.5, accuracy  # chance is 1/6
    # An identical fit finds the saved model instead of training again.
    fresh = make_method("finetune", **params)
    fresh.fit = None  # training again would fail: the saved fit must be loaded
    again = fit_or_load(fresh, photos, train_labels, RunContext(ws))
    assert again is not fresh and again.model_dir_ == method.model_dir_
    assert again.predict(PhotoSet(ws, tuple(test))) == predicted


@pytest.mark.parametrize(("objective", "adapt"), [("supcon", "last"), ("simclr", "lora")])
def test_contrastive_end_to_end(ws_root, tiny_root, objective, adapt):
    model = str(tiny_model("dinov2", tiny_root))
    classify(
        ws_root,
        "--method",
        "contrastive",
        "--model",
        model,
        "--shots",
        "3",
        "--seeds",
        "2",
        "--param",
        f"objective={objective}",
        "--param",
        f"adapt={adapt}",
        "--param",
        "epochs=2",
        "--param",
        "batch_size=8",
        "--param",
        "blocks=1",
    )
    runs, preds = kshot_runs(ws_root, "contrastive")
    assert len(runs) == 2
    for run in runs:
        assert len(preds[run["run_id"]]) == 30
    folders = sorted((ws_root / "models").iterdir())
    assert len(folders) == 2
    info = json.loads((folders[0] / "method.json").read_text())
    # simclr trains on every photo of the workspace, supcon on the labelled training photos
    assert info["n_adapt"] == (48 if objective == "simclr" else 18)
    assert info["n_train"] == 18 and len(info["history"]) == 2


def test_failed_photos_get_failed_predictions(tmp_path, photo_set, tiny_root):
    shutil.copytree(photo_set, tmp_path / "photos")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photos"])
    labels = ws.labels()
    ids = sorted(labels)
    train, test = ids[:30], ids[30:]
    broken = test[2]
    ws.photo_paths([broken])[broken].write_bytes(b"GIF89a broken")
    model = str(tiny_model("dinov2", tiny_root))
    for name, params in [
        ("probe", {}),
        ("finetune", {"epochs": 1, "val_fraction": 0}),
        ("contrastive", {"epochs": 1}),
    ]:
        method = make_method(name, model=model, **params)
        method.fit(PhotoSet(ws, tuple(train)), [labels[i] for i in train])
        preds = {p.photo_id: p for p in method.predict_iter(PhotoSet(ws, tuple(test)))}
        assert sorted(preds) == sorted(test), name
        assert preds[broken].status == "failed" and preds[broken].class_id is None, name
        assert "not an image" in preds[broken].detail or "unreadable" in preds[broken].detail
        assert all(p.status == "ok" for pid, p in preds.items() if pid != broken), name
    ws.close()


def test_bad_parameters_are_clear_errors(ws_root, tiny_root):
    model = str(tiny_model("dinov2", tiny_root))
    for args, message in [
        (["--method", "finetune", "--param", "mode=everything"], "mode must be one of"),
        (["--method", "probe", "--param", "classifier=svm"], "classifier must be one of"),
        (["--method", "contrastive", "--param", "objective=byol"], "objective must be one of"),
    ]:
        result = runner.invoke(
            app, ["classify", str(ws_root), "--model", model, "--shots", "2", *args]
        )
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, ["predict", str(ws_root), "--model-dir", str(ws_root)])
    assert result.exit_code == 2 and "not a saved model folder" in result.output


# --------------------------------------------------------------------------- building blocks


def test_contrastive_loss_prefers_aligned_views():
    torch.manual_seed(0)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    base = torch.randn(3, 16)
    aligned = base.repeat_interleave(2, dim=0) + 0.01 * torch.randn(6, 16)
    shuffled = aligned[torch.tensor([0, 2, 4, 1, 3, 5])]
    assert contrastive_loss(aligned, groups) < contrastive_loss(shuffled, groups)
    # SimCLR: a photo's two views are its only positives
    simclr = contrastive_loss(aligned, torch.arange(3).repeat_interleave(2))
    assert torch.isfinite(simclr) and simclr > 0
    assert contrastive_loss(aligned, torch.arange(6)) == 0  # no positives: no signal


def test_augmentation_and_sampling():
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (300, 200), (10, 200, 30))
    for _ in range(20):
        assert random_resized_crop(image, 48, rng).size == (48, 48)
    panorama = Image.new("RGB", (2000, 20))
    assert random_resized_crop(panorama, 16, rng).size == (16, 16)
    x = torch.rand(4, 3, 8, 8)
    jittered = colour_jitter(x, torch.Generator().manual_seed(0))
    assert jittered.shape == x.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.equal(jittered, x)
    labels = [0] * 90 + [1] * 10
    counts = np.bincount(
        np.asarray(labels)[balanced_order(labels, rng, balanced=True)], minlength=2
    )
    assert 30 <= counts[1] <= 70  # the rare class is drawn about half the time
    train, val = stratified_split(list("abcdefgh"), [0, 0, 0, 0, 1, 1, 1, 2], 0.25, rng)
    assert sorted(train + val) == list(range(8)) and 7 in train  # a lone photo stays in training
    assert {0, 1} <= {[0, 0, 0, 0, 1, 1, 1, 2][i] for i in val}
