"""The database errors of the catalog, told apart here so code outside the workspace never
imports the database library itself."""

from __future__ import annotations

import sys

__all__ = ["is_catalog_error"]


def is_catalog_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the catalog's database library. Never true before the
    library is loaded, so asking does not load it (``--help`` stays fast)."""
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.Error)
