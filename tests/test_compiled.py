"""Compiled embedding (torch.compile with frozen weights): same vectors, decided by measurement."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.models import compiled
from naturelens.models.backbones import BackboneError, load_backbone
from naturelens.models.compiled import CACHE_FILE, _cache_key, compile_for_job, compiled_chunk
from naturelens.models.embedding import embed_photos, load_embeddings
from naturelens.testing.tiny_models import tiny_model

runner = CliRunner()


@pytest.fixture
def decisions(tmp_path, monkeypatch):
    """An empty decision cache of this test's own."""
    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


def _no_compiler(fn, **options):
    def run(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    return run


def test_compiled_vectors_match_eager_ones_photo_by_photo(labelled_workspace, tiny_root):
    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    ids = ws.photo_ids()
    # 48 photos in batches of 5: the last batch (3 photos) is padded to the compiled shape.
    emb = embed_photos(ws, model, batch_size=5, precision="fp32", compile="on")
    assert emb.computed == len(ids) and emb.compiled.startswith("compiled (as asked")
    assert emb.compile_seconds > 0
    got_ids, fast = load_embeddings(ws, model, ids)
    backbone = load_backbone(model, precision="fp32")
    paths = ws.photo_paths(ids)
    pixels = np.stack([backbone.preprocessing.decode(paths[i].read_bytes()) for i in ids])
    eager = backbone.embed(pixels)
    assert got_ids == ids
    np.testing.assert_allclose(fast, eager, rtol=1e-4, atol=1e-4)
    # every photo kept its own vector: the nearest eager vector is its own
    assert (
        np.argmin(((fast[:, None] - eager[None]) ** 2).sum(-1), axis=1) == range(len(ids))
    ).all()


def test_auto_compiles_by_the_time_a_job_would_save(tiny_root, decisions, monkeypatch):
    backbone = load_backbone(str(tiny_model("dinov2", tiny_root)), precision="fp32")
    # A short job on an empty cache: no compile, nothing measured or remembered.
    embed, choice = compile_for_job(backbone, photos=20, batch_size=4)
    assert embed == backbone.embed and not choice.compiled and choice.how == "skipped"
    assert "measured on a job of" in choice.reason and not decisions.exists()
    # A measurement made before: compiled 2x faster, 5 s to compile.
    key = _cache_key(backbone, compiled_chunk(backbone, 4))
    before = {
        "compiled": True,
        "how": "measured",
        "reason": "20.0 photos/s compiled, 10.0 eager, 5 s to compile",
        "eager_photos_per_s": 10.0,
        "compiled_photos_per_s": 20.0,
        "compile_s": 5.0,
    }
    decisions.parent.mkdir(parents=True)
    decisions.write_text(json.dumps({key: before}))
    embed, choice = compile_for_job(backbone, photos=50, batch_size=4)  # saves 2.5 s < 5
    assert not choice.compiled and choice.how == "cached" and "would save 2 s" in choice.reason
    embed, choice = compile_for_job(backbone, photos=1000, batch_size=4)  # saves 50 s
    assert choice.compiled and choice.how == "cached" and "saves about 50 s" in choice.reason
    size = backbone.preprocessing.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    assert embed(pixels).shape == (6, backbone.dim)
    np.testing.assert_allclose(embed(pixels), backbone.embed(pixels), rtol=1e-4, atol=1e-4)


def test_auto_measures_a_long_job_once_and_remembers(tiny_root, decisions, monkeypatch):
    backbone = load_backbone(str(tiny_model("clip", tiny_root)), precision="fp32")
    monkeypatch.setattr(compiled, "MIN_JOB_SECONDS", 0.0)
    embed, choice = compile_for_job(backbone, photos=10**7, batch_size=4)
    assert choice.how == "measured" and choice.reason.startswith("measured now:")
    assert choice.compile_s > 0 and choice.eager_photos_per_s > 0
    assert choice.compiled_photos_per_s > 0
    # Whichever was faster, it is the one the job runs and the one remembered.
    assert (embed != backbone.embed) == choice.compiled
    [(key, saved)] = json.loads(decisions.read_text()).items()
    assert key == _cache_key(backbone, compiled_chunk(backbone, 4))
    assert saved["compiled"] == choice.compiled and saved["compile_s"] == choice.compile_s
    _, again = compile_for_job(backbone, photos=10, batch_size=4)
    assert again.how == "cached" and not again.compiled


def test_a_model_that_cannot_compile_runs_eagerly(labelled_workspace, tiny_root, decisions):
    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", _no_compiler)
        patch.setattr(compiled, "MIN_JOB_SECONDS", 0.0)
        emb = embed_photos(ws, model, batch_size=8, precision="fp32")
        assert emb.computed == len(ws.photo_ids())
        assert emb.compiled == (
            "not compiled (measured now: compiling failed: "
            "InvalidCxxCompiler: No working C++ compiler found)"
        )
        # The failure is remembered: the next job does not try again.
        [saved] = json.loads(decisions.read_text()).values()
        assert not saved["compiled"] and "compiling failed" in saved["reason"]
        shutil.rmtree(ws.root / "embeddings")
        with pytest.raises(BackboneError, match="could not be compiled.*--compile off"):
            embed_photos(ws, model, batch_size=8, precision="fp32", compile="on")


def test_embed_command_says_whether_it_compiled(labelled_workspace, tiny_root, decisions):
    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    ws.close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", _no_compiler)
        result = runner.invoke(app, ["embed", str(ws.root), "--model", model, "--compile", "on"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "--compile off" in lines[-1]
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["embed", str(ws.root), "--model", model, "--compile", "maybe"])
    assert result.exit_code == 2 and "compile must be one of" in result.output
    result = runner.invoke(app, ["embed", str(ws.root), "--model", model])
    assert result.exit_code == 0, result.output
    assert "model: not compiled (about " in result.output


def test_two_models_of_one_architecture_compile_to_their_own_weights(tiny_root, tmp_path):
    from transformers import AutoModel

    first = tiny_model("dinov2", tiny_root)
    second = tmp_path / "dinov2-changed"
    shutil.copytree(first, second)
    module = AutoModel.from_pretrained(first)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    module.save_pretrained(second)
    a = load_backbone(str(first), precision="fp32")
    b = load_backbone(str(second), precision="fp32")
    x = compiled._sample(a, 4)
    # Compiled in one process, one after the other: frozen weights must not be shared.
    fast_a = compiled.CompiledEmbedder(a, 4).embed(x)
    fast_b = compiled.CompiledEmbedder(b, 4).embed(x)
    assert np.abs(a.embed(x) - b.embed(x)).max() > 0.1  # the models differ
    np.testing.assert_allclose(fast_a, a.embed(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast_b, b.embed(x), rtol=1e-4, atol=1e-4)
