"""The embedding engine and the vision backbones, with tiny models and real EfficientNet weights."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.models.backbones import (
    DeviceError,
    Preprocessing,
    load_backbone,
    load_efficientnet_lite0,
    pick_dtype,
    resolve_card,
)
from naturelens.models.cards import CardError, get_card
from naturelens.models.embedding import (
    embed_batches,
    embed_photos,
    embedding_set,
    load_embeddings,
    missing_photo_ids,
)
from naturelens.sources.images import decode_photo
from naturelens.testing.synthetic import synthetic_photo
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Workspace

runner = CliRunner()


def direct_vector(backbone, path) -> np.ndarray:
    """One photo through the backbone on its own, bypassing the engine."""
    pixels = backbone.preprocessing.decode(path.read_bytes())
    return backbone.embed(pixels[None])[0]


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-registers", "clip", "siglip"])
def test_vectors_are_joined_to_their_photos(labelled_workspace, tiny_root, kind):
    ws = labelled_workspace
    model = str(tiny_model(kind, tiny_root))
    ids = ws.photo_ids()
    emb = embed_photos(ws, model, batch_size=5, part_size=7, precision="fp32")
    assert emb.computed == len(ids) and emb.failed == 0
    assert len(emb.parts()) >= 2  # streamed in several parts
    wanted = ids[::-1][:17] + ["not-a-photo"]
    got_ids, vectors = load_embeddings(ws, model, wanted)
    assert got_ids == ids[::-1][:17]  # requested order, unknown id dropped
    assert vectors.dtype == np.float32 and vectors.shape == (17, emb.dim)
    backbone = load_backbone(model, precision="fp32")
    paths = ws.photo_paths(got_ids)
    for row in (0, 8, 16):
        expected = direct_vector(backbone, paths[got_ids[row]])
        np.testing.assert_allclose(vectors[row], expected, rtol=1e-4, atol=1e-5)
    # rows differ from each other: no photo got another's vector
    assert len({v.tobytes() for v in vectors}) == len(vectors)
    meta = json.loads((emb.folder / "meta.json").read_text())
    assert meta["dim"] == emb.dim and meta["input_size"] == 32 and meta["pooling"] == emb.pooling
    assert ws.status()["embeddings"][0]["key"] == emb.key


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_image_towers_give_get_image_features(labelled_workspace, tiny_root, kind):
    """The stored vector is what transformers' processor + get_image_features give."""
    from transformers import AutoModel, AutoProcessor

    ws = labelled_workspace
    model = str(tiny_model(kind, tiny_root))
    ids = ws.photo_ids()[:6]
    embed_photos(ws, model, ids, precision="fp32")
    got_ids, vectors = load_embeddings(ws, model, ids)
    processor = AutoProcessor.from_pretrained(model)
    full = AutoModel.from_pretrained(model).eval()
    paths = ws.photo_paths(ids)
    # Decoded as the engine decodes (JPEG draft mode), then the reference processor.
    side = load_backbone(model).preprocessing.draft_side
    images = [decode_photo(paths[i].read_bytes(), max_side=side) for i in got_ids]
    with torch.no_grad():
        out = full.get_image_features(**processor(images=images, return_tensors="pt"))
    expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    np.testing.assert_allclose(vectors, expected.numpy(), rtol=1e-3, atol=1e-4)


def test_pooling_choice_makes_its_own_cache(labelled_workspace, tiny_root):
    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    ids = ws.photo_ids()[:4]
    cls = embed_photos(ws, model, ids)
    both = embed_photos(ws, model + "@cls+mean", ids)
    assert cls.key != both.key
    assert both.dim == 2 * cls.dim
    _, a = load_embeddings(ws, model, ids)
    _, b = load_embeddings(ws, model + "@cls+mean", ids)
    np.testing.assert_allclose(b[:, : cls.dim], a, rtol=1e-5, atol=1e-6)  # cls first
    card, pooling = resolve_card(model + "@cls+mean")
    assert card.source == str(tiny_model("dinov2", tiny_root).resolve()) and pooling == "cls+mean"
    with pytest.raises(CardError, match="image_embeds"):
        load_backbone(str(tiny_model("clip", tiny_root)) + "@cls")


@pytest.fixture
def private_workspace(tmp_path, photo_set):
    """A workspace over a private copy of the photos, whose files a test may break."""
    shutil.copytree(photo_set, tmp_path / "photos")
    ws = Workspace.create(tmp_path / "ws", "flips")
    ws.ingest([tmp_path / "photos"])
    yield ws
    ws.close()


def test_failed_photos_are_recorded_and_shift_nothing(private_workspace, tiny_root):
    ws = private_workspace
    model = str(tiny_model("dinov2", tiny_root))
    ids = ws.photo_ids()
    paths = ws.photo_paths(ids)
    # Files change after ingest: one truncated, one replaced by an HTML page, one removed.
    broken = {ids[3]: "truncated image", ids[10]: "not an image", ids[11]: "file not readable"}
    data = paths[ids[3]].read_bytes()
    paths[ids[3]].write_bytes(data[: len(data) // 3])
    paths[ids[10]].write_bytes(b"<html>rate limited</html>")
    paths[ids[11]].unlink()
    emb = embed_photos(ws, model, batch_size=4, precision="fp32")
    assert emb.failed == 3 and emb.computed == len(ids) - 3
    failures = emb.failures()
    assert {pid: reason.split(":")[0] for pid, reason in failures.items()} == broken
    got_ids, vectors = load_embeddings(ws, model, ids)
    assert got_ids == [i for i in ids if i not in broken]
    backbone = load_backbone(model, precision="fp32")
    for row in (2, 3, 9, 10):  # the photos right around the broken ones
        np.testing.assert_allclose(
            vectors[row], direct_vector(backbone, paths[got_ids[row]]), rtol=1e-4, atol=1e-5
        )
    # failures are not retried by default, and they are retried when asked
    assert missing_photo_ids(ws, model) == []
    again = embed_photos(ws, model, retry_failed=True, precision="fp32")
    assert again.failed == 3 and again.computed == 0
    # A file that is back is tried again by itself; the broken ones still wait to be asked.
    paths[ids[11]].write_bytes(paths[ids[12]].read_bytes())
    assert missing_photo_ids(ws, model) == []  # what the model has not seen at all
    back = embed_photos(ws, model, precision="fp32")
    assert (back.computed, back.failed) == (1, 0)
    assert set(back.failures()) == {ids[3], ids[10]}


def test_interrupted_run_resumes_without_redoing_or_losing_work(labelled_workspace, tiny_root):
    ws = labelled_workspace
    model = str(tiny_model("dinov2", tiny_root))
    ids = ws.photo_ids()
    handled = []

    def stop_after_three_batches(n):
        handled.append(n)
        if len(handled) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_photos(ws, model, batch_size=4, part_size=100, progress=stop_after_three_batches)
    emb = embedding_set(ws, model)
    # the three finished batches were written when the run stopped
    assert len(emb.photo_ids()) == 12
    # a half-written part from a killed process is ignored
    (emb.folder / ".part-x.parquet.tmp").write_bytes(b"PAR1 garbage")
    resumed = embed_photos(ws, model, batch_size=4)
    assert resumed.computed == len(ids) - 12
    assert sorted(resumed.photo_ids()) == sorted(ids)
    all_ids, vectors = load_embeddings(ws, model, ids)
    assert all_ids == ids and np.isfinite(vectors).all()
    assert embed_photos(ws, model).computed == 0  # nothing left to do


def test_embed_batches_is_a_pure_function_over_a_batch(tiny_root, photo_set):
    backbone = load_backbone(str(tiny_model("siglip", tiny_root)), precision="fp32")
    files = sorted(photo_set.rglob("*.jpg"))[:3]
    batch = {
        "photo_id": ["a", "b", "c", "d"],
        "bytes": [files[0].read_bytes(), b"not a photo", files[1].read_bytes(), b""],
    }
    out = embed_batches(batch, backbone)
    assert out["photo_id"] == ["a", "b", "c", "d"]
    assert out["failure"] == [None, "not an image", None, "empty file"]
    assert np.isfinite(out["vector"][[0, 2]]).all() and np.isnan(out["vector"][[1, 3]]).all()
    by_path = embed_batches(
        {"photo_id": ["a", "c"], "path": [str(files[0]), str(files[1])]}, backbone
    )
    np.testing.assert_allclose(by_path["vector"], out["vector"][[0, 2]], rtol=1e-5)


def test_embed_command(labelled_workspace, tiny_root):
    ws = labelled_workspace
    model = str(tiny_model("dinov2-registers", tiny_root))
    ws.close()
    result = runner.invoke(app, ["embed", str(ws.root), "--model", model, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "48 photos embedded" in result.output
    result = runner.invoke(app, ["embed", str(ws.root), "--model", model])
    assert result.exit_code == 0 and "0 photos embedded" in result.output
    bad = runner.invoke(app, ["embed", str(ws.root), "--model", "no-such-model"])
    assert bad.exit_code == 2 and "unknown model" in bad.output
    bad = runner.invoke(app, ["embed", str(ws.root), "--model", model, "--precision", "fp8"])
    assert bad.exit_code == 2 and "precision" in bad.output


def test_preprocessing_matches_transformers_processor():
    from transformers import BitImageProcessorPil

    processor = BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    ours = Preprocessing(224, 256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for size in [(400, 300), (300, 500), (256, 256)]:
        image = synthetic_photo(4, 7, size=512).resize(size)
        expected = processor(images=image, return_tensors="pt")["pixel_values"]
        got = ours.normalise(torch.from_numpy(ours.prepare(image))[None])
        assert got.shape == expected.shape
        # one resize with a crop box instead of resize-then-crop: edge pixels may differ a little
        assert (got - expected).abs().mean() < 0.01, size


def test_cards_and_precision():
    for name in ["dinov2-small", "dinov2-giant-registers", "clip-vit-l14", "siglip-so400m"]:
        card = get_card(name, kind="vision")
        assert {"input_size", "resize", "mean", "std", "pooling", "dim"} <= set(card.fields)
    assert get_card("clip-vit-b32").kind == "clip"
    assert pick_dtype("fp32", torch.device("cpu")) == torch.float32
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DeviceError, match="precision"):
        pick_dtype("half", torch.device("cpu"))
    with pytest.raises(DeviceError, match="device"):
        load_backbone("efficientnet-lite0", device="tpu")


def test_efficientnet_lite0_real_weights():
    net = load_efficientnet_lite0()
    assert net._fc.out_features == 1000
    backbone = load_backbone("efficientnet-lite0", precision="fp32")
    pixels = np.stack(
        [backbone.preprocessing.prepare(synthetic_photo(i, i, 160)) for i in range(3)]
    )
    feats = backbone.embed(pixels)
    assert feats.shape == (3, 1280) and np.isfinite(feats).all()
    with torch.inference_mode():
        logits = backbone.imagenet_logits(backbone.pixels_to_input(pixels))
        direct = net(backbone.pixels_to_input(pixels))
    torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-4)
