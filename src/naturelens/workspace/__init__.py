"""The workspace: the only owner of the catalog, the embedding store, the ledger,
descriptions and comparisons. Every table and every SQL statement lives in this package.

Its names load on first use, so that importing one small module of the package (the
catalog's error class, which every command's error handling needs) does not load the
catalog and the embedding store with their libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naturelens.workspace.core import IngestReport, Prediction, Workspace, WorkspaceError, now

__all__ = ["IngestReport", "Prediction", "Workspace", "WorkspaceError", "now"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from naturelens.workspace import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
