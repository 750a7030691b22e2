"""Gold labels with their provenance: every label ever given, and the current one.

Two tables. ``label_history`` is append-only: one event per label given, with where it
came from (``folder``, ``manifest`` or ``review``), the folder, manifest row or page it
came from, when, and an optional user name. An event with no class withdraws a label
(undo in the review app). ``labels`` holds each photo's current gold label, the newest
event; it is what every method reads, so a correction never erases the earlier label
from the history, while methods see only the corrected one.

Workspaces made before the history existed get one event per stored label when the
table is first made, dated when the photo was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

ORIGINS = ("folder", "manifest", "review", "user")

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS label_event_seq;
CREATE TABLE IF NOT EXISTS label_history (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('label_event_seq'),
    photo_id VARCHAR NOT NULL,
    class_id VARCHAR,
    origin VARCHAR NOT NULL,
    source VARCHAR,
    user_name VARCHAR,
    created_at TIMESTAMP NOT NULL
);
"""

_BACKFILL = """
INSERT INTO label_history (photo_id, class_id, origin, source, user_name, created_at)
SELECT l.photo_id, l.class_id, coalesce(l.origin, 'user'), NULL, NULL,
       coalesce(p.added_at, TIMESTAMP '1970-01-01')
FROM labels l LEFT JOIN photos p USING (photo_id)
ORDER BY l.photo_id
"""


def ensure_history(db: duckdb.DuckDBPyConnection) -> None:
    """Make the history table; on a workspace that had labels before it, record them."""
    existed = db.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'label_history'"
    ).fetchone()[0]
    db.execute(SCHEMA)
    if not existed:
        db.execute(_BACKFILL)


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
