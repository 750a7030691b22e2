"""Vision architecture families: a ConvNeXt added as one module and a card runs through
the same commands as every other backbone; shared weights are loaded once per process."""

import re

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, ConvNextModel
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.models.backbones import load_backbone
from naturelens.models.cards import get_card
from naturelens.models.embedding import load_embeddings
from naturelens.models.vision import FamilyError, families, family_for
from naturelens.testing.tiny_models import tiny_model
from naturelens.workspace.core import Workspace

runner = CliRunner()


@pytest.fixture(scope="module")
def convnext(tiny_root):
    return str(tiny_model("convnext", tiny_root))


def test_registry_knows_every_family():
    assert {"dinov2", "clip", "siglip", "efficientnet", "convnext"} <= set(families())
    assert family_for(model_type="dinov2_with_registers").name == "dinov2"
    assert family_for(package="efficientnet-lite0").name == "efficientnet"
    with pytest.raises(FamilyError, match="not vision backbones"):
        family_for(model_type="bert")
    card = get_card("convnext-tiny", kind="vision")
    assert card.source == "facebook/convnext-tiny-224" and card.dim == 768


def test_convnext_features_are_the_models_pooled_output(convnext, photo_set):
    backbone = load_backbone(convnext, precision="fp32")
    assert backbone.arch == "convnext" and backbone.pooling == "mean" and backbone.dim == 32
    # The processor's recipe read from the folder: short side 32 / 0.875, centre crop 32.
    assert (backbone.preprocessing.resize, backbone.preprocessing.crop) == (36, 32)
    paths = sorted(photo_set.rglob("*.jpg"))[:4]
    ours = backbone.embed(np.stack([backbone.preprocessing.decode(p.read_bytes()) for p in paths]))
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    inputs = AutoImageProcessor.from_pretrained(convnext)(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = ConvNextModel.from_pretrained(convnext)(**inputs).pooler_output.numpy()
    cosine = (
        (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    )
    # One resize with a crop box instead of resize-then-crop: edge pixels differ a little.
    assert cosine.min() > 0.99, cosine
    with pytest.raises(Exception, match="convnext models give pooling mean"):
        load_backbone(convnext + "@cls")


def test_convnext_embed_command_then_probe(labelled_workspace, convnext):
    ws = labelled_workspace
    ids = ws.photo_ids()
    root = ws.root
    ws.close()
    result = runner.invoke(app, ["embed", str(root), "--model", convnext, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert f"{len(ids)} photos embedded" in result.output
    with Workspace.open(root) as ws:
        found, vectors = load_embeddings(ws, convnext, ids)
    assert found == ids and vectors.shape == (len(ids), 32) and np.isfinite(vectors).all()
    args = ["classify", str(root), "--method", "probe", "--model", convnext]
    result = runner.invoke(app, [*args, "--shots", "2", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert "probe 2-shot accuracy" in result.output
    with Workspace.open(root) as ws:
        (run,) = [r for r in ws.runs("probe") if r["params"].get("purpose") == "collection"]
        preds = ws.predictions(run["run_id"])
        assert len(preds) == len(ids) - 12  # 2 photos x 6 classes trained on
        assert all(p.status == "ok" and p.class_id in ws.taxonomy.class_ids for p in preds)


def test_convnext_lora_finetune(labelled_workspace, convnext):
    root = labelled_workspace.root
    labelled_workspace.close()
    params = ["mode=lora", "epochs=1", "batch_size=8"]
    args = ["classify", str(root), "--method", "finetune", "--model", convnext, "--shots", "2"]
    result = runner.invoke(
        app, [*args, "--seeds", "1", *[x for p in params for x in ("--param", p)]]
    )
    assert result.exit_code == 0, result.output
    with Workspace.open(root) as ws:
        (run,) = [r for r in ws.runs("finetune") if r["params"].get("purpose") == "collection"]
        assert all(p.status == "ok" for p in ws.predictions(run["run_id"]))


def test_a_model_no_family_loads_is_one_clear_line(labelled_workspace, tiny_root):
    root = labelled_workspace.root
    labelled_workspace.close()
    bert = str(tiny_model("bert", tiny_root))
    result = runner.invoke(app, ["embed", str(root), "--model", bert])
    assert result.exit_code == 2 and "not vision backbones" in result.output
    assert "Traceback" not in result.output


def test_zeroshot_after_embedding_loads_the_clip_weights_once(
    labelled_workspace, tiny_root, monkeypatch
):
    import transformers

    from naturelens.methods import make_method, run_method
    from naturelens.models.backbones import clear_loaded_models
    from naturelens.models.embedding import embed_photos

    clip = str(tiny_model("clip", tiny_root))
    loads = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        loads.append(str(args[0]))
        return real(*args, **kwargs)

    clear_loaded_models()
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    ws = labelled_workspace
    ids = ws.photo_ids()
    embed_photos(ws, clip, ids)
    method = make_method("zeroshot", model=clip)
    run = run_method(ws, method, ids)
    assert loads == [clip]
    # Both towers come from that one copy, in one weights type.
    assert method.model_ is method.backbone_.module
    assert {p.dtype for p in method.model_.parameters()} == {method.bundle_.dtype}
    preds = ws.predictions(run)
    assert len(preds) == len(ids) and all(p.status == "ok" for p in preds)
    # A fine-tuning copy is never the shared one.
    trained = load_backbone(clip, training=True)
    assert trained.module is not method.model_ and len(loads) == 2


def test_cards_are_typed_and_errors_name_file_and_card(tmp_path, monkeypatch):
    from naturelens.models.cards import CardError, VisionCard, all_cards, resolve

    card = resolve("dinov2-small", kind="vision")
    assert isinstance(card, VisionCard) and card.dim == 384 and card.mean[0] == 0.485
    assert resolve("dinov2-small", kind="vision") is card  # resolved once, not re-read
    siglip = resolve("siglip-base")
    assert siglip.crop is None and "crop" in siglip.fields  # null is set, not left out
    folder = tmp_path / "cards"
    folder.mkdir()
    monkeypatch.setenv("NATURELENS_CARDS", str(folder))
    path = folder / "mine.yaml"
    path.write_text("- {name: mine, kind: vision, source: x/y, dim: 12, colour: red}\n")
    with pytest.raises(CardError, match=r"mine\.yaml: card 'mine': unknown field 'colour'"):
        all_cards()
    path.write_text("- {name: mine, kind: vision, source: x/y, dim: twelve}\n")
    with pytest.raises(CardError, match=r"mine\.yaml: card 'mine': field 'dim' must be int"):
        resolve("mine")
    path.write_text("- {name: mine, kind: vision, source: x/y, dim: 12}\n")
    assert resolve("mine").dim == 12


def test_a_mistyped_model_says_what_it_is_not_and_what_was_meant(tmp_path, monkeypatch):
    from naturelens.models.cards import CardError, resolve

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CardError, match=r"did you mean 'dinov2-small'\?"):
        resolve("dinov2-smal", kind="vision")
    # A path is never sent to the hub as a model id.
    for path in ("/no/such/folder", "./models/dinov2", "models/dinov2/v2", "../x"):
        with pytest.raises(CardError, match=f"no model folder '{re.escape(path)}'"):
            resolve(path, kind="vision")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CardError, match="has no config.json"):
        resolve("empty", kind="vision")


def test_a_models_spec_is_remembered_until_its_config_changes(tmp_path, monkeypatch):
    """The per-machine memo of specs read from config files gives what reading them gives,
    and a rewritten config file is read again (a stale memo would mix embeddings)."""
    import json

    from naturelens.models import specs

    monkeypatch.setenv("NATURELENS_CACHE", str(tmp_path / "cache"))
    folder = tiny_model("dinov2", tmp_path / "tiny")
    read = []
    real = specs.card_preprocessing
    monkeypatch.setattr(specs, "card_preprocessing", lambda card: read.append(1) or real(card))
    first = specs.model_spec(str(folder))
    assert specs.model_spec(str(folder)) == first and len(read) == 1  # second from the memo
    assert specs.model_spec(f"{folder}@mean")["pooling"] == "mean"  # an override is its own
    config = folder / "preprocessor_config.json"
    settings = json.loads(config.read_text())
    settings["image_mean"] = [0.5, 0.5, 0.5]
    config.write_text(json.dumps(settings))
    changed = specs.model_spec(str(folder))
    assert changed["mean"] == [0.5, 0.5, 0.5] != first["mean"]
