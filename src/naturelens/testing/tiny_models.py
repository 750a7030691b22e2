"""Tiny, randomly initialised models of real transformers architectures, built offline.

Each kind is a real architecture (Dinov2, CLIP, SigLIP, LLaVA, Idefics3, Qwen2-VL, Qwen2,
DistilBERT) shrunk to about a hundred thousand parameters, saved with ``save_pretrained``
together with a real tokenizer and processor in one folder. Code under test then loads the
folder with ``from_pretrained`` exactly as it would load a hub checkpoint, so loaders,
processors, chat templates and ``generate`` all run for real, in seconds, without a network.

The outputs are random: use these models to test plumbing, shapes and round trips, never
predictions.

>>> import transformers
>>> from naturelens.testing.tiny_models import tiny_model
>>> folder = tiny_model("clip")  # doctest: +SKIP
>>> model = transformers.AutoModel.from_pretrained(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TINY_KINDS: tuple[str, ...] = (
    "dinov2",
    "dinov2-registers",
    "clip",
    "siglip",
    "convnext",
    "llava",
    "idefics3",
    "qwen2-vl",
    "causal-lm",
    "bert",
)

# Bump when a builder changes so cached folders from older builds are rebuilt.
_BUILD_VERSION = 1
_MARKER = ".naturelens-tiny-model.json"
_SEED = 0

# Sizes shared by all tiny models: big enough to exercise every code path (several heads,
# more than one layer so "second to last layer" features exist), small enough to run in
# milliseconds on a CPU.
_HIDDEN = 32
_INTERMEDIATE = 64
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_IMAGE = 32
_PATCH = 8

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_BICUBIC = 3

# Chat templates follow the real checkpoints' templates (Qwen2-Instruct ChatML,
# llava-hf/llava-1.5, HuggingFaceM4/Idefics3-8B-Llama3, Qwen2-VL-Instruct), extended so
# that a plain string content also works everywhere.
_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the tokenizers are trained on. Everything outside them still tokenizes: byte-level
# tokenizers fall back to bytes, the others to single characters.
_WORDS = """
a an the of and or in on at to from with without by for is are was were be been has have
this that these those it its there here what which who where when how why not no yes all
some many few one two three four five six seven eight nine ten first second last other
photo photograph picture image shot scene view close up closeup wide angle blurry sharp
dark bright light night day morning evening sunset sunrise winter summer spring autumn
bird birds heron egret gull eagle hawk owl sparrow robin finch crow duck goose swan
pigeon parrot woodpecker kingfisher cat dog fox deer bear wolf rabbit squirrel mouse horse
cow sheep goat frog toad lizard snake turtle fish insect bee wasp butterfly moth beetle
spider ant dragonfly snail worm tree trees flower flowers leaf leaves grass moss fern
mushroom fungus plant plants bush shrub branch root seed fruit berry oak pine maple birch
willow rose tulip daisy lily orchid sunflower cactus forest wood meadow field garden park
river lake pond sea ocean beach coast shore island mountain hill valley rock stone sand
snow ice rain cloud clouds sky sun moon star water wave city street road house building
car bike boat person people man woman child face hand document screenshot receipt text
map food plate cup table chair window door wall room indoor outdoor landscape portrait
macro animal animals wildlife nature species genus family order class kingdom label
labels category categories answer question describe describes description shows showing
show contains contain visible main subject background foreground left right top bottom
center middle small large big tiny huge little long short tall young old new red orange
yellow green blue purple pink brown black white gray grey colour color colorful
sitting standing flying swimming running walking eating resting perched looking
please choose pick only single word reply exactly list following options best matches
none unknown other assistant user system you your i my me we our they their he she
""".split()


def default_root() -> Path:
    """Return the folder tiny models are cached in.

    Returns
    -------
    Path
        ``$NATURELENS_TINY_MODELS`` if set, else ``~/.cache/naturelens/tiny-models``.
    """
    env = os.environ.get("NATURELENS_TINY_MODELS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "naturelens" / "tiny-models"


def tiny_model(kind: str, root: str | Path | None = None) -> Path:
    """Build (once) a tiny random model of a real architecture and return its folder.

    The folder holds the model, its tokenizer and its processor, all written with
    ``save_pretrained``, so every ``Auto*.from_pretrained(folder)`` call works offline.

    Parameters
    ----------
    kind
        One of :data:`TINY_KINDS`.
    root
        Folder to build in; defaults to :func:`default_root`. A folder that already holds a
        complete build of the same version is reused.

    Returns
    -------
    Path
        ``root / kind``.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    root = Path(root).expanduser() if root is not None else default_root()
    folder = root / kind
    if _is_complete(folder, kind):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename into place, so that neither an interrupted
    # build nor a concurrent one (pytest-xdist) leaves a half-written folder behind.
    tmp = root / f".{kind}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build(kind, tmp)
        if folder.exists():
            if _is_complete(folder, kind):
                return folder
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not _is_complete(folder, kind):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _marker_payload(kind: str) -> dict[str, Any]:
    import transformers

    # Saved formats change between transformers releases, so a build is only reused by the
    # release that wrote it.
    return {"kind": kind, "build": _BUILD_VERSION, "transformers": transformers.__version__}


def _is_complete(folder: Path, kind: str) -> bool:
    marker = folder / _MARKER
    try:
        return json.loads(marker.read_text()) == _marker_payload(kind)
    except (OSError, ValueError):
        return False


def _build(kind: str, folder: Path) -> None:
    import torch

    folder.mkdir(parents=True)
    # Fork the RNG so that building a model does not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        _BUILDERS[kind](folder)
    # Written last: its presence means every file above is complete.
    (folder / _MARKER).write_text(json.dumps(_marker_payload(kind)))


# --------------------------------------------------------------------------- tokenizers


def _corpus() -> Iterator[str]:
    """Yield a small deterministic training text covering words, digits and punctuation."""
    rng = random.Random(_SEED)
    punct = [".", ",", "!", "?", ":", ";", " -", "'s", ")"]
    for _ in range(600):
        words = rng.sample(_WORDS, rng.randint(4, 12))
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        yield " ".join(words) + rng.choice(punct)
    for _ in range(20):
        yield " ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(8))
    # Role names as the chat templates spell them, so prompts tokenize into few pieces.
    for _ in range(20):
        for role in ("user", "assistant", "system"):
            for spelling in (role, role.capitalize(), role.upper()):
                yield f"{spelling}: {spelling}:\n{spelling}\n"
    yield string.printable
    yield " ".join(string.ascii_letters + string.digits + string.punctuation)


def _train_bpe(
    backend: Any, vocab_size: int, special_tokens: list[str], **trainer_kwargs: Any
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train BPE merges with ``backend``'s own pipeline and return ``(vocab, merges)``."""
    from tokenizers import Tokenizer, trainers

    backend = Tokenizer.from_str(backend.to_str())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False, **trainer_kwargs
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


# Offset of the private-use twins that stand for marked characters while training.
_MARK = 0xF0000


def _train_marked_bpe(
    backend: Any, vocab_size: int, alphabet: list[str], affix: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """Train BPE pieces with CLIP's end-of-word suffix or WordPiece's ``##`` prefix.

    The tokenizers trainers number suffixed or prefixed symbols in hash order, so their
    merges change between processes. Training plain BPE on words whose last (``"suffix"``)
    or non-first (``"prefix"``) characters are swapped for private-use twins gives the same
    pieces deterministically. Returns the pieces in training order and the merges.
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE

    def mark(text: str) -> str:
        return "".join(chr(_MARK + ord(c)) for c in text)

    def unmark(token: str) -> str:
        plain = "".join(chr(ord(c) - _MARK) if ord(c) >= _MARK else c for c in token)
        if affix == "suffix":
            return plain + "</w>" if ord(token[-1]) >= _MARK else plain
        return "##" + plain if ord(token[0]) >= _MARK else plain

    words = []
    for text in _corpus():
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            words.append(
                word[:-1] + mark(word[-1]) if affix == "suffix" else word[0] + mark(word[1:])
            )
    trainer_backend = Tokenizer(BPE())
    trainer_backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=sorted(set(alphabet) | set(mark("".join(alphabet)))),
        show_progress=False,
    )
    trainer_backend.train_from_iterator([" ".join(words)], trainer=trainer)
    model = json.loads(trainer_backend.to_str())["model"]
    pieces = [unmark(t) for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges.append((unmark(left), unmark(right)))
    return pieces, merges


def _extend_vocab(vocab: dict[str, int], tokens: list[str]) -> dict[str, int]:
    """Append the tokens ``vocab`` lacks, numbering them after the existing ones."""
    vocab = dict(vocab)
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def _byte_level_bpe(
    vocab_size: int, special_tokens: list[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with the Qwen2 / Llama 3 pipeline; return ``(vocab, merges)``."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    # Qwen2's pipeline (NFC, GPT-4 style split, byte level) is also Llama 3's, so one
    # trainer serves both; every byte is in the vocab, so any text round-trips.
    return _train_bpe(
        Qwen2Tokenizer().backend_tokenizer,
        vocab_size,
        special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )


def _qwen2_tokenizer(extra_special: list[str], chat_template: str) -> Any:
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_special]
    vocab, merges = _byte_level_bpe(1000, specials)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        chat_template=chat_template,
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def _llama2_tokenizer(extra_special: list[str], chat_template: str | None) -> Any:
    """A Llama-2 style tokenizer: SentencePiece-like BPE with byte fallback."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizer

    backend = LlamaTokenizer().backend_tokenizer
    # Train with a splitting pre-tokenizer so merges stay inside words, as SentencePiece's do.
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    vocab, merges = _train_bpe(backend, 900, specials)
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=4096,
        padding_side="left",
        chat_template=chat_template,
    )
    tok.add_special_tokens({"additional_special_tokens": extra_special})
    return tok


def _clip_tokenizer() -> Any:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges = _train_marked_bpe(CLIPTokenizer().backend_tokenizer, 1400, alphabet, "suffix")
    # Like the real CLIP vocab, hold every byte both inside and at the end of a word.
    vocab = _extend_vocab(
        {t: i for i, t in enumerate(specials)},
        vocab + sorted(alphabet) + sorted(a + "</w>" for a in alphabet),
    )
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _siglip_tokenizer() -> Any:
    """A SentencePiece-like lowercasing tokenizer that ends every text with ``</s>``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    # The real SiglipTokenizer needs sentencepiece; this mirrors its behaviour (lowercase,
    # "▁" word marks, trailing </s>, pad = </s>) with the tokenizers library only.
    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1),
        ]
    )
    specials = ["<pad>", "</s>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    vocab, merges = _train_bpe(backend, 800, specials)
    backend.model = BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )


def _bert_tokenizer() -> Any:
    from transformers import DistilBertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Every printable character, alone and as a word piece, so no ASCII word becomes [UNK].
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    pieces, _ = _train_marked_bpe(DistilBertTokenizer().backend_tokenizer, 800, chars, "prefix")
    vocab = _extend_vocab(
        {t: i for i, t in enumerate(specials)}, pieces + chars + ["##" + c for c in chars]
    )
    return DistilBertTokenizer(vocab=vocab, model_max_length=512)


# --------------------------------------------------------------------------- helpers


def _image_processor_class(name: str) -> Any:
    """Return ``transformers.<name>``, or its PIL twin when torchvision is missing.

    Both save the same ``image_processor_type``; picking the twin up front only avoids the
    fallback warning transformers prints otherwise.
    """
    import transformers
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available() and hasattr(transformers, name + "Pil"):
        return getattr(transformers, name + "Pil")
    return getattr(transformers, name)


def _llama_text_config(tok: Any, **overrides: Any) -> dict[str, Any]:
    config = {
        "model_type": "llama",
        "vocab_size": len(tok),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": 2048,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


def _set_generation_config(model: Any, **ids: Any) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(**ids)


def _save(folder: Path, model: Any, *parts: Any) -> None:
    model.eval()
    model.save_pretrained(folder)
    for part in parts:
        part.save_pretrained(folder)


# --------------------------------------------------------------------------- builders


def _dinov2_processor() -> Any:
    # The real DINOv2 processor resizes the shortest edge to 256 and centre-crops 224; the
    # same 8:7 ratio at tiny scale.
    return _image_processor_class("BitImageProcessor")(
        do_resize=True,
        size={"shortest_edge": 36},
        resample=_BICUBIC,
        do_center_crop=True,
        crop_size={"height": _IMAGE, "width": _IMAGE},
        do_rescale=True,
        do_normalize=True,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        do_convert_rgb=True,
    )


def _dinov2_kwargs() -> dict[str, Any]:
    # image_size is twice the crop, like the real 518 vs 224, so the position-embedding
    # interpolation path runs as it does with real checkpoints.
    return {
        "hidden_size": _HIDDEN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "mlp_ratio": 2,
        "image_size": 2 * _IMAGE,
        "patch_size": _PATCH,
    }


def _build_dinov2(folder: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    _save(folder, Dinov2Model(Dinov2Config(**_dinov2_kwargs())), _dinov2_processor())


def _build_dinov2_registers(folder: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(num_register_tokens=4, **_dinov2_kwargs())
    _save(folder, Dinov2WithRegistersModel(config), _dinov2_processor())


def _vision_tower(**overrides: Any) -> dict[str, Any]:
    config = {
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "image_size": _IMAGE,
        "patch_size": _PATCH,
    }
    config.update(overrides)
    return config


def _build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    text = {
        "vocab_size": len(tok),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "max_position_embeddings": 77,
        # The text tower pools at the first eos, found through these ids.
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = CLIPConfig(text_config=text, vision_config=_vision_tower(), projection_dim=_HIDDEN)
    image_processor = _image_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": _IMAGE},
        crop_size={"height": _IMAGE, "width": _IMAGE},
        resample=_BICUBIC,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    _save(folder, CLIPModel(config), processor)


def _build_siglip(folder: Path) -> None:
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor

    tok = _siglip_tokenizer()
    text = {
        "vocab_size": len(tok),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "max_position_embeddings": 64,
        # The text tower pools the last position, which padding to max_length makes </s>.
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    config = SiglipConfig(text_config=text, vision_config=_vision_tower())
    image_processor = _image_processor_class("SiglipImageProcessor")(
        size={"height": _IMAGE, "width": _IMAGE},
        resample=_BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tok)
    _save(folder, SiglipModel(config), processor)


def _build_convnext(folder: Path) -> None:
    from transformers import ConvNextConfig, ConvNextModel

    # Two stages of one block each; the stem's 4x4 patches and one 2x downsampling leave a
    # 4x4 feature map of a 32-pixel input.
    config = ConvNextConfig(
        num_stages=2, hidden_sizes=[16, _HIDDEN], depths=[1, 1], image_size=_IMAGE
    )
    # As the real processor below 384 pixels: short side to size / crop_pct, centre crop.
    processor = _image_processor_class("ConvNextImageProcessor")(
        size={"shortest_edge": _IMAGE},
        crop_pct=0.875,
        resample=_BICUBIC,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
    )
    _save(folder, ConvNextModel(config), processor)


def _build_llava(folder: Path) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama2_tokenizer(["<image>", "<pad>"], _LLAVA_TEMPLATE)
    tok.pad_token = "<pad>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    # llava-1.5 drops the CLS token ("default" strategy), so an image costs
    # (image / patch)^2 tokens: 16 here.
    image_seq_length = (_IMAGE // _PATCH) ** 2
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **_vision_tower(projection_dim=_HIDDEN)},
        text_config=_llama_text_config(tok),
        image_token_index=image_token_id,
        image_seq_length=image_seq_length,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    image_processor = _image_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": _IMAGE},
        crop_size={"height": _IMAGE, "width": _IMAGE},
        resample=_BICUBIC,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_TEMPLATE,
    )
    model = LlavaForConditionalGeneration(config)
    _set_generation_config(
        model,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    _save(folder, model, processor)


def _build_idefics3(folder: Path) -> None:
    from tokenizers import Tokenizer, processors
    from tokenizers.models import BPE
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        PreTrainedTokenizerFast,
        Qwen2Tokenizer,
    )

    grid_tokens = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
        *grid_tokens,
    ]
    vocab, merges = _byte_level_bpe(1000, specials)
    # Llama 3 ships a plain tokenizer.json (PreTrainedTokenizerFast) with the byte-level
    # pipeline; its post-processor itself prepends <|begin_of_text|>.
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pipeline = Qwen2Tokenizer().backend_tokenizer
    backend.normalizer = pipeline.normalizer
    backend.pre_tokenizer = pipeline.pre_tokenizer
    backend.decoder = pipeline.decoder
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|reserved_special_token_0|>",
        additional_special_tokens=specials[3:],
        model_max_length=10240,
        padding_side="left",
        chat_template=_IDEFICS3_TEMPLATE,
    )
    scale_factor = 2
    # Each sub-image of image x image pixels becomes (image / patch)^2 patches, merged
    # scale_factor^2 at a time by the connector: 4 tokens here (169 in the real model).
    image_seq_len = (_IMAGE // _PATCH) ** 2 // scale_factor**2
    config = Idefics3Config(
        vision_config=_vision_tower(),
        text_config=_llama_text_config(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = _image_processor_class("Idefics3ImageProcessor")(
        do_resize=True,
        size={"longest_edge": 2 * _IMAGE},
        max_image_size={"longest_edge": _IMAGE},
        do_image_splitting=True,
        do_pad=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=image_seq_len,
        chat_template=_IDEFICS3_TEMPLATE,
    )
    model = Idefics3ForConditionalGeneration(config)
    _set_generation_config(
        model,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.convert_tokens_to_ids("<end_of_utterance>"), tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )
    _save(folder, model, processor)


def _build_qwen2_vl(folder: Path) -> None:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        # Qwen2VLProcessor insists on a video processor, and those exist only for torchvision.
        raise ImportError("the qwen2-vl tiny model needs torchvision (pip install torchvision)")

    vision_tokens = [
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = _qwen2_tokenizer(vision_tokens, _QWEN2_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in vision_tokens}
    merge = 2
    text = {
        "vocab_size": len(tok),
        "hidden_size": _HIDDEN,
        "intermediate_size": _INTERMEDIATE,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": 32768,
        # Multimodal RoPE splits each head's rotary half (head_dim / 2 = 4) into
        # temporal, height and width sections, like [16, 24, 24] for the real head_dim 128.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "depth": _LAYERS,
        "embed_dim": _HIDDEN,
        "hidden_size": _HIDDEN,
        "num_heads": _HEADS // 2,
        "mlp_ratio": 2,
        "patch_size": _PATCH,
        "spatial_merge_size": merge,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    factor = _PATCH * merge
    # Real bounds are 4 and 1280 merged tokens (56*56 and 28*28*1280 pixels); here 4 and 16,
    # so a photo costs 4 to 16 image tokens.
    pixels = {
        "min_pixels": 4 * factor**2,
        "max_pixels": 16 * factor**2,
        "patch_size": _PATCH,
        "temporal_patch_size": 2,
        "merge_size": merge,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
    processor = Qwen2VLProcessor(
        image_processor=_image_processor_class("Qwen2VLImageProcessor")(**pixels),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_QWEN2_VL_TEMPLATE,
    )
    model = Qwen2VLForConditionalGeneration(config)
    _set_generation_config(
        model,
        bos_token_id=text["bos_token_id"],
        eos_token_id=[tok.eos_token_id, text["bos_token_id"]],
        pad_token_id=tok.pad_token_id,
    )
    _save(folder, model, processor)


def _build_causal_lm(folder: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _qwen2_tokenizer([], _CHATML_TEMPLATE)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=_HIDDEN,
        intermediate_size=_INTERMEDIATE,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=32768,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    # Qwen2-Instruct stops at <|im_end|> as well as <|endoftext|>.
    _set_generation_config(
        model,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.pad_token_id,
    )
    _save(folder, model, tok)


def _build_bert(folder: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tok = _bert_tokenizer()
    config = DistilBertConfig(
        vocab_size=len(tok),
        dim=_HIDDEN,
        hidden_dim=_INTERMEDIATE,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    # distilbert-base-uncased ships its masked-LM head; sequence classification heads are
    # added (randomly initialised) when loading with AutoModelForSequenceClassification.
    _save(folder, DistilBertForMaskedLM(config), tok)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "dinov2": _build_dinov2,
    "dinov2-registers": _build_dinov2_registers,
    "clip": _build_clip,
    "siglip": _build_siglip,
    "convnext": _build_convnext,
    "llava": _build_llava,
    "idefics3": _build_idefics3,
    "qwen2-vl": _build_qwen2_vl,
    "causal-lm": _build_causal_lm,
    "bert": _build_bert,
}
