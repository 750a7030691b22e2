"""Damaged catalogs and embedding parts, concurrent commands: clear messages, no silent harm."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.workspace.core import Workspace, WorkspaceError
from naturelens.workspace.embeddings import EmbeddingSet, EmbeddingStoreError

runner = CliRunner()


def _store(folder, n=256, dim=64, nan_row=None):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    if nan_row is not None:
        vectors[nan_row, 3] = np.nan
    emb = EmbeddingSet(folder, "m", "cls")
    emb.start({"model": "m"}, dim)
    writer = emb.writer(part_size=n)
    ids = [f"p{i:04d}" for i in range(n)]
    writer.add({"photo_id": ids, "vector": vectors, "failure": [None] * n, "detail": [None] * n})
    writer.flush()
    return emb, ids, vectors


def test_an_overwritten_embedding_part_is_detected_and_named(tmp_path):
    emb, ids, vectors = _store(tmp_path / "emb")
    [part] = emb.parts()
    assert emb.load(ids)[1].shape == vectors.shape and emb.verify() == []
    size = part.stat().st_size
    with open(part, "r+b") as fh:
        fh.seek(size // 3)
        fh.write(os.urandom(4096))
    with pytest.raises(EmbeddingStoreError) as info:
        emb.load(ids)
    assert part.name in str(info.value) and "embed" in info.value.hint
    assert emb.verify() == [part]


def test_a_non_finite_vector_is_a_failure_not_a_vector(tmp_path):
    emb, ids, _ = _store(tmp_path / "emb", n=10, nan_row=4)
    assert emb.failures() == {"p0004": "non-finite embedding: NaN or inf values"}
    got, matrix = emb.load(ids)
    assert "p0004" not in got and np.isfinite(matrix).all()


def _workspace_with_photo(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.jpg")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path])
    ws.ingest([tmp_path])  # a second ingest copies the catalog first
    ws.close()
    return tmp_path / "ws"


def test_a_catalog_that_cannot_be_opened_names_the_newest_copy(tmp_path):
    root = _workspace_with_photo(tmp_path)
    backups = sorted(root.glob("catalog.backup-*.duckdb"))
    (root / "catalog.duckdb").write_bytes(b"\0" * 8192)
    with pytest.raises(WorkspaceError) as info:
        _ = Workspace.open(root).db
    assert "damaged" in str(info.value) and str(backups[-1]) in info.value.hint


def test_a_damaged_catalog_says_how_to_restore_it(tmp_path):
    root = _workspace_with_photo(tmp_path)
    backups = sorted(root.glob("catalog.backup-*.duckdb"))
    assert backups
    catalog = root / "catalog.duckdb"
    with open(catalog, "r+b") as fh:
        fh.truncate(catalog.stat().st_size // 2)
    result = runner.invoke(app, ["status", str(root)])
    assert result.exit_code == 2, result.output
    assert "catalog" in result.output and "catalog.backup-" in result.output
    assert "Traceback" not in result.output
    os.replace(backups[-1], catalog)  # what the hint says to do
    assert Workspace.open(root).status()["photos"] == 1


HOLD = """
import sys, time
from naturelens.workspace.core import Workspace
ws = Workspace.open(sys.argv[1])
_ = ws.db
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_busy_catalog_is_one_line_naming_the_other_process(tmp_path, monkeypatch):
    import naturelens.workspace.core as core

    monkeypatch.setattr(core, "LOCK_WAIT_SECONDS", 0.2)
    root = _workspace_with_photo(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        result = runner.invoke(app, ["status", str(root)])
        assert result.exit_code == 2
        assert f"in use by another naturelens command (process {holder.pid})" in result.output
        assert len(result.output.strip().splitlines()) <= 3  # one line, soft-wrapped
    finally:
        holder.communicate("")


INIT = """
import sys
from naturelens.workspace.core import Workspace, WorkspaceError
try:
    Workspace.create(sys.argv[1], sys.argv[2])
    print("made")
except WorkspaceError as exc:
    print("refused")
"""


def test_init_where_no_workspace_can_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for where, says in [
        (tmp_path / "afile", "a file is in the way"),
        (tmp_path / "afile" / "sub", "cannot make a workspace here"),
    ]:
        out = CliRunner().invoke(app, ["init", str(where), "--taxonomy", "flips"])
        assert out.exit_code == 2 and out.output.startswith(f"error: {where}: {says}")
    assert (tmp_path / "afile").read_text() == "x"


def test_two_inits_at_once_make_one_consistent_workspace(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    root = tmp_path / "ws"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INIT, str(root), tax], stdout=subprocess.PIPE, text=True, env=env
        )
        for tax in ("flips", "ces11")
    ]
    outcomes = sorted(p.communicate()[0].strip() for p in procs)
    assert outcomes == ["made", "refused"]
    meta = yaml.safe_load((root / "workspace.yaml").read_text())
    ws = Workspace.open(root)
    assert ws.taxonomy.label == meta["taxonomy"]
    assert not (root / ".creating").exists()


STATUS = """
import sys
from naturelens.workspace.core import Workspace
print(Workspace.open(sys.argv[1], read_only=True).status()["photos"])
"""


def test_status_reads_while_embedding_holds_the_workspace(tmp_path):
    from naturelens.models.embedding import _paths

    root = _workspace_with_photo(tmp_path)
    ws = Workspace.open(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "NATURELENS_LOCK_WAIT": "0"}
    for _ in _paths(ws, ws.photo_ids()):  # the embedding engine between two blocks
        out = subprocess.run(
            [sys.executable, "-c", STATUS, str(root)], capture_output=True, text=True, env=env
        )
        assert out.stdout.strip() == "1", out.stderr
    assert ws.status()["photos"] == 1  # and the job's workspace opens the catalog again
