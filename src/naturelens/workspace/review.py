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

# Sort keys -> (needs the run's predictions, needs the references, ORDER BY expression).
SORTS = {
    "added": (False, False, "p.rowid"),
    "photo": (False, False, "p.photo_id"),
    "taken": (False, True, "taken_at NULLS LAST, p.photo_id"),
    "-taken": (False, True, "taken_at DESC NULLS LAST, p.photo_id"),
    "title": (False, True, "title NULLS LAST, p.photo_id"),
    "confidence": (True, False, "pr.confidence NULLS LAST, p.photo_id"),
    "-confidence": (True, False, "pr.confidence DESC NULLS LAST, p.photo_id"),
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
    min_set_size, max_set_size
        Size of the run's conformal prediction set (photos without one never match).
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
    min_set_size: int | None = None
    max_set_size: int | None = None
    text: str | None = None
    taken_from: date | datetime | None = None
    taken_to: date | datetime | None = None
    lat_min: float | None = None
    lat_max: float | None = None
    lon_min: float | None = None
    lon_max: float | None = None
    sort: str = "added"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _has_table(ws: Workspace, name: str) -> bool:
    row = ws.db.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row[0])


def _where(ws: Workspace, f: PhotoFilter) -> tuple[list[str], list[Any], bool]:
    """Conditions on ``photos p`` (and ``pr``, the run's prediction, when the flag is set)."""
    if f.state not in STATES:
        raise ReviewQueryError(f"state must be one of {STATES}, not {f.state!r}")
    if f.sort not in SORTS:
        raise ReviewQueryError(f"sort must be one of {sorted(SORTS)}, not {f.sort!r}")
    if f.run_id and not ws.db.execute("SELECT 1 FROM runs WHERE run_id = ?", [f.run_id]).fetchone():
        raise ReviewQueryError(f"no run {f.run_id!r} in this workspace")
    where = ["p.failure IS NULL"]
    args: list[Any] = []
    needs_run = False
    if f.predicted:
        where.append("pr.class_id = ?")
        args.append(f.predicted)
        needs_run = True
    if f.min_confidence is not None:
        where.append("pr.confidence >= ?")
        args.append(float(f.min_confidence))
        needs_run = True
    if f.max_confidence is not None:
        where.append("pr.confidence <= ?")
        args.append(float(f.max_confidence))
        needs_run = True
    for bound, op in ((f.min_set_size, ">="), (f.max_set_size, "<=")):
        if bound is not None:
            where.append(f"json_array_length(pr.prediction_set) {op} ?")
            args.append(int(bound))
            needs_run = True
    if f.label:
        where.append("p.photo_id IN (SELECT photo_id FROM labels WHERE class_id = ?)")
        args.append(f.label)
    if f.state == "gold":
        where.append("p.photo_id IN (SELECT photo_id FROM labels)")
    elif f.state == "unlabelled":
        where.append("p.photo_id NOT IN (SELECT photo_id FROM labels)")
    elif f.state == "corrected":
        # Relabelled in review where an earlier label or some run said otherwise.
        where.append(
            "p.photo_id IN (SELECT l.photo_id FROM labels l "
            "WHERE l.photo_id IN (SELECT photo_id FROM label_history WHERE origin = 'review') "
            "AND (EXISTS (SELECT 1 FROM label_history h WHERE h.photo_id = l.photo_id "
            "AND h.class_id IS DISTINCT FROM l.class_id) OR "
            "EXISTS (SELECT 1 FROM predictions q WHERE q.photo_id = l.photo_id "
            "AND q.status = 'ok' AND q.class_id != l.class_id)))"
        )
    if f.disagree:
        where.append(
            "p.photo_id IN (SELECT photo_id FROM predictions WHERE status = 'ok' "
            "GROUP BY photo_id HAVING count(DISTINCT class_id) > 1)"
        )
    # Text, dates and places live on the photo's references (any of them may match);
    # EXIF dates and positions count too.
    if f.text and f.text.strip():
        pattern = _like(f.text.strip())
        found = [
            "SELECT photo_id FROM refs WHERE title ILIKE ? ESCAPE '\\' OR tags ILIKE ? ESCAPE '\\'"
        ]
        args += [pattern, pattern]
        if _has_table(ws, "descriptions"):
            found.append("SELECT photo_id FROM descriptions WHERE text ILIKE ? ESCAPE '\\'")
            args.append(pattern)
        where.append(f"p.photo_id IN ({' UNION '.join(found)})")
    ranges = [
        ("taken_at", "exif_taken_at", f.taken_from, f.taken_to),
        ("lat", "exif_lat", f.lat_min, f.lat_max),
        ("lon", "exif_lon", f.lon_min, f.lon_max),
    ]
    for column, exif, low, high in ranges:
        if low is None and high is None:
            continue
        cond, vals = [], []
        if low is not None:
            cond.append("{c} >= ?")
            vals.append(low)
        if high is not None:
            cond.append("{c} <= ?")
            vals.append(high)
        on_ref = " AND ".join(cond).format(c=column)
        on_exif = " AND ".join(cond).format(c=f"p.{exif}")
        where.append(f"(p.photo_id IN (SELECT photo_id FROM refs WHERE {on_ref}) OR ({on_exif}))")
        args += vals + vals
    return where, args, needs_run


def browse(
    ws: Workspace, f: PhotoFilter, offset: int = 0, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """One page of photos under ``f``: ``(total matching, rows)``.

    The page's photo ids are chosen on the photos table with filters as semi-joins, and
    only the page's rows are then joined to their references, labels and predictions.

    Each row has ``photo_id``, ``title``, ``tags``, ``label``, ``taken_at``, ``lat``,
    ``lon`` and the run's ``predicted`` class, ``confidence`` and ``status``.
    """
    limit = max(1, min(int(limit), 500))
    offset = max(0, int(offset))
    where, args, needs_run = _where(ws, f)
    sort_run, sort_refs, order = SORTS[f.sort]
    source = "photos p"
    head: list[Any] = []
    if needs_run or sort_run:
        join = "JOIN" if needs_run else "LEFT JOIN"
        source += f" {join} predictions pr ON pr.photo_id = p.photo_id AND pr.run_id = ?"
        head.append(f.run_id or "")
    if sort_refs:
        source += (
            " LEFT JOIN (SELECT photo_id, min(title) AS title, min(taken_at) AS taken_at "
            "FROM refs GROUP BY photo_id) r ON r.photo_id = p.photo_id"
        )
        order = order.replace("taken_at", "coalesce(r.taken_at, p.exif_taken_at)").replace(
            "title", "r.title"
        )
    body = f"FROM {source} WHERE " + " AND ".join(where)
    total = ws.db.execute(f"SELECT count(*) {body}", head + args).fetchone()[0]
    ids = [
        r[0]
        for r in ws.db.execute(
            f"SELECT p.photo_id {body} ORDER BY {order} LIMIT ? OFFSET ?",
            head + args + [limit, offset],
        ).fetchall()
    ]
    return total, page_rows(ws, ids, f.run_id)


def page_rows(ws: Workspace, photo_ids: list[str], run_id: str | None) -> list[dict[str, Any]]:
    """Grid rows of ``photo_ids``, in that order (see :func:`browse`)."""
    if not photo_ids:
        return []
    # The first reference of each photo, as in the catalog's photo view, without making
    # the view rank every reference of the collection.
    view: dict[str, dict[str, Any]] = {}
    cur = ws.db.execute(
        "SELECT p.photo_id, r.title, r.tags, l.class_id AS label, "
        "coalesce(r.taken_at, p.exif_taken_at) AS taken_at, coalesce(r.lat, p.exif_lat) AS lat, "
        "coalesce(r.lon, p.exif_lon) AS lon FROM photos p "
        "LEFT JOIN refs r ON r.photo_id = p.photo_id AND r.photo_id IN (SELECT unnest($ids)) "
        "LEFT JOIN labels l ON l.photo_id = p.photo_id "
        "WHERE p.photo_id IN (SELECT unnest($ids)) ORDER BY r.added_at DESC, r.ref DESC",
        {"ids": photo_ids},
    )
    cols = [d[0] for d in cur.description]
    for row in cur.fetchall():
        view[row[0]] = dict(zip(cols, row, strict=True))  # the last one written is the first
    preds = {}
    if run_id:
        preds = {
            pid: (c, conf, st, size)
            for pid, c, conf, st, size in ws.db.execute(
                "SELECT photo_id, class_id, confidence, status, "
                "json_array_length(prediction_set) FROM predictions "
                "WHERE run_id = ? AND photo_id IN (SELECT unnest(?))",
                [run_id, photo_ids],
            ).fetchall()
        }
    out = []
    for pid in photo_ids:
        v = view.get(pid, {})
        c, conf, st, size = preds.get(pid, (None, None, None, None))
        out.append(
            {
                "photo_id": pid,
                "title": v.get("title"),
                "tags": v.get("tags"),
                "label": v.get("label"),
                "taken_at": v.get("taken_at"),
                "lat": v.get("lat"),
                "lon": v.get("lon"),
                "predicted": c,
                "confidence": conf,
                "status": st,
                "set_size": size,
            }
        )
    return out


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
