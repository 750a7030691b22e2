"""The catalog queries behind the review app: one page of photos under filters, one
photo in full, class counts per run.

Every query reads one page (``LIMIT``/``OFFSET``) or one aggregate, so what a request
holds in memory does not grow with the number of photos. User text only ever reaches
SQL as a bound parameter; sort keys come from a fixed table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from naturelens.errors import NaturelensError
from naturelens.workspace.core import Workspace

SORTS = {
    "photo": "v.photo_id",
    "taken": "v.taken_at NULLS LAST, v.photo_id",
    "-taken": "v.taken_at DESC NULLS LAST, v.photo_id",
    "title": "v.title NULLS LAST, v.photo_id",
    "confidence": "pr.confidence NULLS LAST, v.photo_id",
    "-confidence": "pr.confidence DESC NULLS LAST, v.photo_id",
    "added": "v.photo_id",
}
STATES = ("any", "gold", "unlabelled", "corrected")


class ReviewQueryError(NaturelensError, ValueError):
    """A filter or sort the catalog cannot answer."""


@dataclass
class PhotoFilter:
    """What the grid shows. Empty fields filter nothing.

    Attributes
    ----------
    run_id
        The run whose predictions the grid shows and ``predicted``/confidence filter on.
    predicted
        Class the run predicted.
    label
        Current gold class.
    state
        ``gold`` (has a gold label), ``unlabelled``, ``corrected`` (relabelled in review
        where an earlier label or a run said otherwise) or ``any``.
    disagree
        Only photos on which runs predict different classes.
    text
        Words found in the title, tags or a stored description (case-insensitive).
    """

    run_id: str | None = None
    predicted: str | None = None
    label: str | None = None
    state: str = "any"
    min_confidence: float | None = None
    max_confidence: float | None = None
    disagree: bool = False
    text: str | None = None
    taken_from: date | datetime | None = None
    taken_to: date | datetime | None = None
    lat_min: float | None = None
    lat_max: float | None = None
    lon_min: float | None = None
    lon_max: float | None = None
    sort: str = "photo"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _has_table(ws: Workspace, name: str) -> bool:
    row = ws.db.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row[0])


def _where(ws: Workspace, f: PhotoFilter) -> tuple[str, list[Any]]:
    if f.state not in STATES:
        raise ReviewQueryError(f"state must be one of {STATES}, not {f.state!r}")
    if f.sort not in SORTS:
        raise ReviewQueryError(f"sort must be one of {sorted(SORTS)}, not {f.sort!r}")
    where: list[str] = []
    args: list[Any] = []
    if f.predicted:
        where.append("pr.class_id = ?")
        args.append(f.predicted)
    if f.label:
        where.append("v.label = ?")
        args.append(f.label)
    if f.state == "gold":
        where.append("v.label IS NOT NULL")
    elif f.state == "unlabelled":
        where.append("v.label IS NULL")
    elif f.state == "corrected":
        where.append(
            "v.label IS NOT NULL AND EXISTS (SELECT 1 FROM label_history h "
            "WHERE h.photo_id = v.photo_id AND h.origin = 'review') AND ("
            "EXISTS (SELECT 1 FROM label_history h WHERE h.photo_id = v.photo_id "
            "AND h.class_id IS DISTINCT FROM v.label) OR "
            "EXISTS (SELECT 1 FROM predictions q WHERE q.photo_id = v.photo_id "
            "AND q.status = 'ok' AND q.class_id != v.label))"
        )
    if f.min_confidence is not None:
        where.append("pr.confidence >= ?")
        args.append(float(f.min_confidence))
    if f.max_confidence is not None:
        where.append("pr.confidence <= ?")
        args.append(float(f.max_confidence))
    if f.disagree:
        where.append(
            "v.photo_id IN (SELECT photo_id FROM predictions WHERE status = 'ok' "
            "GROUP BY photo_id HAVING count(DISTINCT class_id) > 1)"
        )
    if f.text and f.text.strip():
        pattern = _like(f.text.strip())
        clauses = ["v.title ILIKE ? ESCAPE '\\'", "v.tags ILIKE ? ESCAPE '\\'"]
        args += [pattern, pattern]
        if _has_table(ws, "descriptions"):
            clauses.append(
                "EXISTS (SELECT 1 FROM descriptions d WHERE d.photo_id = v.photo_id "
                "AND d.text ILIKE ? ESCAPE '\\')"
            )
            args.append(pattern)
        where.append("(" + " OR ".join(clauses) + ")")
    for value, sql in (
        (f.taken_from, "v.taken_at >= ?"),
        (f.taken_to, "v.taken_at <= ?"),
        (f.lat_min, "v.lat >= ?"),
        (f.lat_max, "v.lat <= ?"),
        (f.lon_min, "v.lon >= ?"),
        (f.lon_max, "v.lon <= ?"),
    ):
        if value is not None:
            where.append(sql)
            args.append(value)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def browse(
    ws: Workspace, f: PhotoFilter, offset: int = 0, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """One page of photos under ``f``: ``(total matching, rows)``.

    Each row has ``photo_id``, ``title``, ``tags``, ``label``, ``taken_at``, ``lat``,
    ``lon`` and the run's ``predicted`` class, ``confidence`` and ``status``.
    """
    limit = max(1, min(int(limit), 500))
    offset = max(0, int(offset))
    where, args = _where(ws, f)
    base = (
        "FROM photo_view v LEFT JOIN predictions pr "
        "ON pr.photo_id = v.photo_id AND pr.run_id = ?" + where
    )
    run_args = [f.run_id or ""] + args
    total = ws.db.execute(f"SELECT count(*) {base}", run_args).fetchone()[0]
    cur = ws.db.execute(
        "SELECT v.photo_id, v.title, v.tags, v.label, v.taken_at, v.lat, v.lon, "
        "pr.class_id AS predicted, pr.confidence, pr.status "
        f"{base} ORDER BY {SORTS[f.sort]} LIMIT ? OFFSET ?",
        run_args + [limit, offset],
    )
    cols = [d[0] for d in cur.description]
    return total, [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def photo_detail(ws: Workspace, photo_id: str) -> dict[str, Any] | None:
    """Everything known about one photo: file and EXIF fields, every reference (folder or
    manifest row), every run's prediction, and the label history. None if unknown."""
    cur = ws.db.execute("SELECT * FROM photos WHERE photo_id = ?", [photo_id])
    row = cur.fetchone()
    if row is None:
        return None
    photo = dict(zip([d[0] for d in cur.description], row, strict=True))
    cur = ws.db.execute(
        "SELECT ref, source, url, manifest_id, label_raw, lat, lon, owner, taken_at, title, "
        "tags, failure, failure_detail FROM refs WHERE photo_id = ? ORDER BY added_at, ref",
        [photo_id],
    )
    refs = [dict(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
    cur = ws.db.execute(
        "SELECT p.run_id, r.method, p.class_id, p.confidence, p.status, p.detail, p.model "
        "FROM predictions p JOIN runs r USING (run_id) WHERE p.photo_id = ? "
        "ORDER BY r.started_at, p.run_id",
        [photo_id],
    )
    preds = [dict(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
    view = ws.photo_table([photo_id])
    return {
        "photo": photo,
        "view": view[0] if view else None,
        "refs": refs,
        "predictions": preds,
        "history": ws.label_history([photo_id]),
    }


def class_counts_per_run(ws: Workspace) -> dict[str, dict[str, int]]:
    """Run id -> class id -> number of photos the run put in it (``ok`` predictions)."""
    out: dict[str, dict[str, int]] = {}
    for run_id, class_id, n in ws.db.execute(
        "SELECT run_id, class_id, count(*) FROM predictions WHERE status = 'ok' "
        "GROUP BY ALL ORDER BY 1, 2"
    ).fetchall():
        out.setdefault(run_id, {})[class_id] = n
    return out


def labelled_by_origin(ws: Workspace) -> dict[str, int]:
    """Current gold labels counted by where they came from."""
    return dict(ws.db.execute("SELECT origin, count(*) FROM labels GROUP BY 1").fetchall())
