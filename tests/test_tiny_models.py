"""The tiny models load back through the Auto* classes and run real forward passes."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.utils import is_torchvision_available  # noqa: E402

from naturelens.testing import tiny_models  # noqa: E402
from naturelens.testing.tiny_models import TINY_KINDS, tiny_model  # noqa: E402

VLM_KINDS = ["llava", "idefics3", "qwen2-vl"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="module")
def folder(root):
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = tiny_model(kind, root)
        return built[kind]

    return get


def photo(width=48, height=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def vlm_messages(question="What is in this photo?"):
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": question}],
        }
    ]


def test_kinds_are_listed():
    assert len(set(TINY_KINDS)) == len(TINY_KINDS)
    assert set(TINY_KINDS) == set(tiny_models._BUILDERS)
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        tiny_model("gpt-9", "unused")


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NATURELENS_TINY_MODELS", str(tmp_path))
    assert tiny_models.default_root() == tmp_path
    monkeypatch.delenv("NATURELENS_TINY_MODELS")
    assert tiny_models.default_root().parts[-2:] == ("naturelens", "tiny-models")


def test_build_is_cached_and_deterministic(tmp_path):
    first = tiny_model("causal-lm", tmp_path / "a")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model("causal-lm", tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    second = tiny_model("causal-lm", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.slow
def test_build_is_deterministic_across_processes(tmp_path):
    # Trainers that hash their symbols must not make tokenizers differ between runs.
    kinds = ["clip", "bert"]
    script = (
        "import sys; from naturelens.testing.tiny_models import tiny_model\n"
        "for kind in sys.argv[2:]: tiny_model(kind, sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "a"), *kinds], check=True, env=env)
    for kind in kinds:
        here = tiny_model(kind, tmp_path / "b")
        for name in ("tokenizer.json", "model.safetensors"):
            there = tmp_path / "a" / kind / name
            assert there.read_bytes() == (here / name).read_bytes(), (kind, name)


def test_interrupted_build_is_redone(tmp_path):
    folder = tiny_model("bert", tmp_path)
    (folder / tiny_models._MARKER).unlink()
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert tiny_model("bert", tmp_path) == folder
    assert json.loads((folder / tiny_models._MARKER).read_text())["kind"] == "bert"
    transformers.AutoModel.from_pretrained(folder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-registers"])
def test_dinov2_image_features(folder, kind):
    path = folder(kind)
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    assert type(transformers.AutoProcessor.from_pretrained(path)) is type(processor)
    model = transformers.AutoModel.from_pretrained(path).eval()
    inputs = processor(images=[photo(), photo(60, 30, seed=1)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs)
    registers = model.config.num_register_tokens if kind == "dinov2-registers" else 0
    assert out.last_hidden_state.shape == (2, 1 + registers + 16, model.config.hidden_size)
    assert out.pooler_output.shape == (2, model.config.hidden_size)
    assert torch.isfinite(out.pooler_output).all()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_contrastive_image_and_text_features(folder, kind):
    path = folder(kind)
    processor = transformers.AutoProcessor.from_pretrained(path)
    transformers.AutoImageProcessor.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    texts = ["a photo of a heron", "a photo of a Kingfisher, perched! 🐦"]
    # SigLIP was trained on texts padded to max_length; CLIP pads to the longest.
    padding = "max_length" if kind == "siglip" else True
    inputs = processor(
        text=texts, images=[photo(), photo(seed=1)], padding=padding, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        text_features = model.get_text_features(**text_inputs)
        out = model(**inputs)
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    # SigLIP has no projection: both towers end at the shared hidden size.
    dim = getattr(model.config, "projection_dim", None) or model.config.text_config.hidden_size
    assert image_features.shape == text_features.shape == (2, dim)
    assert out.logits_per_image.shape == (2, 2)
    # Text round-trips through the tokenizer, apart from case folding.
    ids = tokenizer(texts[1])["input_ids"]
    assert "kingfisher" in tokenizer.decode(ids, skip_special_tokens=True).lower()


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_vlm_generates(folder, kind):
    if kind == "qwen2-vl" and not is_torchvision_available():
        with pytest.raises(ImportError, match="torchvision"):
            folder(kind)
        pytest.skip("Qwen2VLProcessor needs torchvision")
    path = folder(kind)
    processor = transformers.AutoProcessor.from_pretrained(path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    prompt = processor.apply_chat_template(vlm_messages(), add_generation_prompt=True)
    assert isinstance(prompt, str)

    inputs = processor(images=[photo()], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert 1 <= new.shape[1] <= 3
    assert isinstance(processor.batch_decode(new, skip_special_tokens=True)[0], str)

    # Batched, left padded, two differently shaped photos and prompts of different lengths.
    processor.tokenizer.padding_side = "left"
    prompts = [
        prompt,
        processor.apply_chat_template(
            vlm_messages("Which of these labels fits best: heron, egret, gull?"),
            add_generation_prompt=True,
        ),
    ]
    inputs = processor(
        images=[photo(), photo(64, 24, seed=1)], text=prompts, padding=True, return_tensors="pt"
    )
    assert (inputs["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(texts) == 2


def test_causal_lm_chat_generates(folder):
    path = folder("causal-lm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    messages = [
        {"role": "system", "content": "Answer with one label."},
        {"role": "user", "content": "Is a heron a bird? Ünïcödé 🐦 日本"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nAnswer with one label.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer([prompt], return_tensors="pt")
    assert tokenizer.decode(inputs["input_ids"][0]) == prompt
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_bert_sequence_classification(folder):
    path = folder("bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3
    ).eval()
    batch = tokenizer(
        ["a heron standing in the river", "Receipt #42: 3 coffees, 7.50 EUR"],
        padding=True,
        truncation=True,
        return_tensors="pt",
    )
    assert tokenizer.unk_token_id not in batch["input_ids"][0].tolist()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3)
    assert transformers.AutoModel.from_pretrained(path).config.model_type == "distilbert"
