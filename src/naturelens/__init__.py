"""naturelens: sort photo collections into your classes with large pretrained models."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from naturelens._version import __version__

# Public names, imported on first use so that `import naturelens` (and every command
# that needs only part of the library) does not pay for the rest.
_LAZY = {
    "Taxonomy": "naturelens.taxonomy",
    "load_taxonomy": "naturelens.taxonomy",
    "Prediction": "naturelens.workspace.core",
    "Workspace": "naturelens.workspace.core",
}

if TYPE_CHECKING:
    from naturelens.taxonomy import Taxonomy, load_taxonomy
    from naturelens.workspace.core import Prediction, Workspace


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'naturelens' has no attribute {name!r}")


__all__ = ["Prediction", "Taxonomy", "Workspace", "__version__", "load_taxonomy"]
