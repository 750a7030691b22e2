"""The ``comparisons`` table: each stored comparison of methods, as JSON."""

from __future__ import annotations

from datetime import datetime

from naturelens.workspace.core import Workspace


def store_comparison(
    ws: Workspace, comparison_id: str, created_at: datetime, protocol: str, data: str
) -> None:
    """Store (or replace) one comparison: its protocol and its table, both as JSON text."""
    ws.db.execute(
        "INSERT OR REPLACE INTO comparisons VALUES (?,?,?,?)",
        [comparison_id, created_at, protocol, data],
    )


def latest_comparison_data(ws: Workspace) -> str | None:
    """The JSON of the most recent comparison, or None when there is none."""
    row = ws.db.execute(
        "SELECT rows FROM comparisons ORDER BY created_at DESC, comparison_id DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None
