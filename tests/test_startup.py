"""Commands import only what they use: small commands never load the model libraries.

Each command runs in a fresh interpreter, which then reports the heavy libraries it
imported. This guards start-up time by behaviour (what was imported), not by a clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from naturelens.workspace.core import Prediction

# The model libraries, and what only ingest, embedding and methods need (image decoding,
# downloads, vectors).
HEAVY = ("torch", "transformers", "sklearn", "scipy", "pandas", "pyarrow.dataset", "PIL", "httpx")
# What reading vectors needs: the catalog's commands list the embedding store without it.
VECTORS = ("numpy", "pyarrow")

# Runs the command line in-process, then prints which heavy libraries were imported.
RUNNER = """
import json, sys
from naturelens.cli import app
try:
    app(sys.argv[1:], prog_name="naturelens")
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
heavy = [m for m in {heavy!r} if m in sys.modules]
print("@@" + json.dumps({{"code": code, "heavy": heavy}}))
"""


def run_cli(*args: str, heavy: tuple[str, ...] = HEAVY) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER.format(heavy=heavy), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert marker, proc.stdout + proc.stderr
    return json.loads(marker[-1][2:]) | {"out": proc.stdout, "err": proc.stderr}


def test_importing_the_command_line_loads_no_model_library():
    result = run_cli("--help")
    assert result["code"] == 0
    assert "status" in result["out"] and "runs" in result["out"]
    assert result["heavy"] == []


def test_help_and_taxonomies_do_not_load_the_catalog():
    """Commands that open no workspace load neither the database nor numpy."""
    for args in (("--help",), ("taxonomy", "list")):
        result = run_cli(*args, heavy=("duckdb", "numpy", "pyarrow"))
        assert result["code"] == 0, result["err"]
        assert result["heavy"] == [], args


@pytest.fixture
def workspace_with_run(labelled_workspace):
    ws = labelled_workspace
    ids = ws.photo_ids()[:6]
    run_id, _ = ws.start_run("probe", {"model": "dinov2-small"})
    ws.write_predictions(run_id, [Prediction(pid, "nature", 0.9) for pid in ids])
    ws.finish_run(run_id)
    root = ws.root
    ws.close()
    return root, run_id


@pytest.mark.parametrize(
    "args",
    [
        ("status", "{ws}"),
        ("status", "{ws}", "--json"),
        ("runs", "list", "{ws}"),
        ("runs", "show", "{ws}", "{run}"),
        ("taxonomy", "list"),
        ("taxonomy", "show", "flips"),
        ("export", "{ws}", "-o", "{out}"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_small_commands_load_no_model_library(workspace_with_run, tmp_path, args):
    root, run_id = workspace_with_run
    out = tmp_path / "predictions.csv"
    args = [a.format(ws=root, out=out, run=run_id) for a in args]
    result = run_cli(*args, heavy=HEAVY + VECTORS)
    assert result["code"] == 0, result["err"]
    assert result["heavy"] == []


def test_probe_on_stored_embeddings_loads_no_torch(labelled_workspace, tiny_root):
    """A probe whose embeddings are all stored needs scikit-learn, not the model libraries:
    the store's key comes from the card and a per-machine memo of the model's config."""
    from naturelens.models.embedding import embed_photos
    from naturelens.testing.tiny_models import tiny_model

    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    embed_photos(ws, model, precision="fp32")
    root = ws.root
    ws.close()
    args = ("classify", str(root), "--method", "probe", "--model", model, "--shots", "2")
    first = run_cli(*args, "--seeds", "1")  # may read the model's config (the memo is per machine)
    assert first["code"] == 0, first["err"]
    again = run_cli(*args, "--seeds", "2")
    assert again["code"] == 0, again["err"]
    assert "accuracy" in again["out"]
    assert "torch" not in again["heavy"] and "transformers" not in again["heavy"]
