"""precision=auto: measured once per model and machine, never a precision that disagrees."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from naturelens.cli import app
from naturelens.models.backbones import load_backbone
from naturelens.models.precision import (
    MARGIN,
    MIN_COSINE,
    choose_precision,
    measure,
    measure_pair,
)
from naturelens.testing.tiny_models import tiny_model


class Embedder(nn.Module):
    """A small conv net; with ``broken_half`` its reduced-precision output is scrambled."""

    def __init__(self, broken_half: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        self.broken_half = broken_half
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.conv(x).mean(dim=(2, 3))
        if self.broken_half and out.dtype != torch.float32:
            out = out.flip(-1) * torch.arange(out.shape[-1], dtype=out.dtype)
        return out


def call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def test_a_precision_that_disagrees_with_fp32_is_never_chosen():
    choice = measure(Embedder(broken_half=True), call, 32, torch.device("cpu"))
    assert choice.precision == "fp32"
    assert choice.cosine["bf16"] < MIN_COSINE
    assert "bf16 disagrees with fp32" in choice.describe()


def test_agreeing_candidates_are_timed_and_the_faster_kept():
    choice = measure(Embedder(), call, 32, torch.device("cpu"))
    assert set(choice.photos_per_s) == {"fp32", "bf16"}
    assert choice.cosine["bf16"] >= MIN_COSINE
    # Whichever won: fp32 unless another was faster by the margin, then the fastest.
    rates = choice.photos_per_s
    if choice.precision == "fp32":
        assert rates["bf16"] <= MARGIN * rates["fp32"]
    else:
        assert rates["bf16"] > MARGIN * rates["fp32"]


CPU = torch.device("cpu")


def test_a_pair_of_copies_keeps_bf16_only_when_it_agrees_and_is_faster():
    rows = torch.softmax(torch.randn(2, 11, generator=torch.Generator().manual_seed(0)), -1)
    close = rows.to(torch.bfloat16)
    agreeing = measure_pair(lambda: rows, lambda: close, CPU, photos=2)
    assert agreeing.cosine["bf16"] >= MIN_COSINE and set(agreeing.photos_per_s) == {"fp32", "bf16"}
    rates = agreeing.photos_per_s  # whichever won, by the rule
    assert (agreeing.precision == "bf16") == (rates["bf16"] > MARGIN * rates["fp32"])
    # Scrambled answers in bf16 are never kept, however fast.
    scrambled = measure_pair(lambda: rows, lambda: rows.flip(-1), CPU, photos=2)
    assert scrambled.precision == "fp32" and scrambled.cosine["bf16"] < MIN_COSINE
    assert "bf16 disagrees with fp32" in scrambled.describe()


def test_convolutional_models_also_time_the_channels_last_layout():
    choice = measure(Embedder(), call, 32, CPU, layouts=True)
    layout = f"{choice.precision}+channels_last"
    assert layout in choice.photos_per_s and choice.cosine[layout] >= MIN_COSINE
    # Kept only when it measured faster than fp32 in the default layout by the margin.
    rates = choice.photos_per_s
    if choice.channels_last:
        assert rates[layout] > MARGIN * rates["fp32"]
        assert rates[layout] == max(rates.values())


def test_a_channels_last_backbone_gives_the_same_embeddings(tiny_root, photo_set, monkeypatch):
    """Whichever layout the measurement keeps, the embeddings are the same."""
    import numpy as np

    from naturelens.models import backbones
    from naturelens.models.precision import PrecisionChoice

    model = str(tiny_model("convnext", tiny_root))
    photos = sorted(photo_set.rglob("*.jpg"))[:4]
    plain = load_backbone(model, precision="fp32")
    pixels = np.stack([plain.preprocessing.decode(p.read_bytes()) for p in photos])
    expected = plain.embed(pixels)
    backbones.clear_loaded_models()
    chosen = PrecisionChoice("fp32", "measured", channels_last=True)
    monkeypatch.setattr(backbones, "resolve_precision", lambda *a, **k: chosen)
    for training in (False, True):
        fast = load_backbone(model, training=training)
        assert fast.channels_last
        assert fast.pixels_to_input(pixels).is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(fast.embed(pixels), expected, rtol=1e-4, atol=1e-5)
    backbones.clear_loaded_models()


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_transformers_time_each_attention_and_run_the_one_kept(
    tiny_root, kind, tmp_path, monkeypatch
):
    from naturelens.models import backbones

    backbones.clear_loaded_models()
    model = str(tiny_model(kind, tiny_root))
    cache = tmp_path / "precision.json"  # an empty decision cache
    monkeypatch.setattr(backbones, "choose_precision", partial(choose_precision, cache=cache))
    auto = load_backbone(model)
    choice = auto.precision
    assert choice.how == "measured"
    assert f"{choice.precision}+sdpa" in choice.photos_per_s
    assert choice.attention in ("naturelens_cpu", "sdpa")
    assert auto.module.config._attn_implementation == choice.attention
    assert "attention" in choice.describe()
    assert json.loads(cache.read_text()).popitem()[1]["attention"] == choice.attention
    backbones.clear_loaded_models()


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_either_attention_gives_the_same_embeddings(tiny_root, photo_set, monkeypatch, kind):
    """Whichever attention the measurement keeps, image and text embeddings are the same."""
    import numpy as np

    from naturelens.models import backbones
    from naturelens.models.cards import resolve
    from naturelens.models.precision import PrecisionChoice

    backbones.clear_loaded_models()
    model = str(tiny_model(kind, tiny_root))
    photos = sorted(photo_set.rglob("*.jpg"))[:4]
    plain = load_backbone(model, precision="fp32")
    assert plain.module.config._attn_implementation != "sdpa"
    pixels = np.stack([plain.preprocessing.decode(p.read_bytes()) for p in photos])
    expected = plain.embed(pixels)
    card = resolve(model)
    bundle = backbones.load_model(card, precision="fp32")
    text = None
    if bundle.has_text_tower:
        words = ["a lake", "a person hiking"]
        tokens = bundle.tokenizer(words, padding=True, return_tensors="pt")
        text = bundle.text_features(tokens)
    backbones.clear_loaded_models()
    chosen = PrecisionChoice("fp32", "measured", attention="sdpa")
    monkeypatch.setattr(backbones, "resolve_precision", lambda *a, **k: chosen)
    for training in (False, True):
        fast = load_backbone(model, training=training)
        assert fast.module.config._attn_implementation == "sdpa"
        np.testing.assert_allclose(fast.embed(pixels), expected, rtol=1e-4, atol=1e-5)
    if text is not None:
        sdpa = backbones.load_model(card)
        assert sdpa.module.config._attn_implementation == "sdpa"
        torch.testing.assert_close(sdpa.text_features(tokens), text, rtol=1e-4, atol=1e-5)
    backbones.clear_loaded_models()


def test_the_decision_is_cached_per_model_and_machine(tmp_path):
    cache = tmp_path / "precision.json"
    module = Embedder()
    measure_now = lambda: measure(module, call, 32, CPU)  # noqa: E731
    first = choose_precision("card-a|src", CPU, measure_now, cache)
    assert first.how == "measured"
    calls = module.calls
    again = choose_precision("card-a|src", CPU, measure_now, cache)
    assert again.how == "cached" and again.precision == first.precision
    assert module.calls == calls  # nothing ran the second time
    other = choose_precision("card-b|src", CPU, measure_now, cache)
    assert other.how == "measured"
    assert len(json.loads(cache.read_text())) == 2


def test_capping_the_instruction_sets_is_another_machine(tmp_path, monkeypatch):
    cache = tmp_path / "precision.json"
    measure_now = lambda: measure(Embedder(), call, 32, CPU)  # noqa: E731
    assert choose_precision("card|src", CPU, measure_now, cache).how == "measured"
    # oneDNN limited to AVX2 runs bf16 many times slower: the decision is not reused.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert choose_precision("card|src", CPU, measure_now, cache).how == "measured"
    assert choose_precision("card|src", CPU, measure_now, cache).how == "cached"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert choose_precision("card|src", CPU, measure_now, cache).how == "cached"
    assert len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_file_is_measured_again(tmp_path):
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    choice = choose_precision("card|src", CPU, lambda: measure(Embedder(), call, 32, CPU), cache)
    assert choice.how == "measured"
    assert "card|src" in next(iter(json.loads(cache.read_text())))


def test_backbones_say_which_precision_runs_and_why(tiny_root):
    model = str(tiny_model("dinov2", tiny_root))
    forced = load_backbone(model, precision="fp32")
    assert forced.precision.how == "forced" and forced.dtype == torch.float32
    auto = load_backbone(model)
    assert auto.precision.how in ("measured", "cached")
    assert auto.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[auto.precision.precision]
    assert load_backbone(model).precision.how == "cached"
    trained = load_backbone(model, training=True)  # fp32 weights, autocast to the choice
    assert trained.precision.how == "cached" and trained.dtype == torch.float32


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_embed_prints_the_precision(labelled_workspace, tiny_root, precision):
    ws = labelled_workspace
    ws.close()
    model = str(tiny_model("dinov2", tiny_root))
    result = CliRunner().invoke(
        app, ["embed", str(ws.root), "--model", model, "--precision", precision]
    )
    assert result.exit_code == 0, result.output
    expected = "(as asked)" if precision == "fp32" else "(auto, measured"
    assert "precision: " in result.output and expected in result.output
