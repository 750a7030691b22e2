"""Gold labels with their provenance: every label ever given, and the current one.

Two tables. ``label_history`` is append-only: one event per label given, with where it
came from (``folder``, ``manifest`` or ``review``), the folder, manifest row or page it
came from, when, and an optional user name. An event with no class withdraws a label
(undo in the review app). ``labels`` holds each photo's current gold label, the newest
event; it is what every method reads, so a correction never erases the earlier label
from the history, while methods see only the corrected one.

The table is made by schema version 4 (:mod:`naturelens.workspace.schema`), which gives
each label of an older workspace one event, dated when its photo was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

ORIGINS = ("folder", "manifest", "review", "user")


def add_label_events(
    db: duckdb.DuckDBPyConnection,
    events: Sequence[tuple[str, str | None, str, str | None, str | None]],
    stamp: datetime,
) -> None:
    """Append ``(photo_id, class_id, origin, source, user)`` events and update current labels.

    The caller owns the transaction. A ``class_id`` of None withdraws the photo's label.
    """
    if not events:
        return
    db.executemany(
        "INSERT INTO label_history (photo_id, class_id, origin, source, user_name, created_at) "
        "VALUES (?,?,?,?,?,?)",
        [(*e, stamp) for e in events],
    )
    # The newest event per photo decides its current label.
    latest = {e[0]: e for e in events}
    keep = [(pid, e[1], e[2]) for pid, e in latest.items() if e[1] is not None]
    drop = [pid for pid, e in latest.items() if e[1] is None]
    if keep:
        db.executemany("INSERT OR REPLACE INTO labels VALUES (?,?,?)", keep)
    if drop:
        db.execute("DELETE FROM labels WHERE photo_id IN (SELECT unnest(?))", [drop])


def history(
    db: duckdb.DuckDBPyConnection, photo_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Label events, oldest first (of ``photo_ids`` only, when given)."""
    sql = (
        "SELECT event_id, photo_id, class_id, origin, source, user_name, created_at "
        "FROM label_history"
    )
    args: list[Any] = []
    if photo_ids is not None:
        sql += " WHERE photo_id IN (SELECT unnest(?))"
        args.append(list(photo_ids))
    cur = db.execute(sql + " ORDER BY event_id", args)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
