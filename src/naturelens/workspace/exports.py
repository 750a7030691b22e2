"""The catalog queries behind exports and maps: one row per photo of a run with the user's
own ids and paths and one column per class score, and photo-user-days per grid cell.

The workspace owns every SQL statement; :mod:`naturelens.report` turns these rows into files
and pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from naturelens.workspace.core import Workspace

# Kilometres per degree of latitude, and of longitude at the equator (WGS84, rounded).
KM_PER_DEG_LAT = 110.574
KM_PER_DEG_LON = 111.320
PERIODS = ("month", "season")

# Text columns a spreadsheet could run as a formula when a cell starts with one of = + - @
# (or a tab / carriage return that hides one): see OWASP's "CSV injection".
TEXT_COLUMNS = (
    "id", "ids", "photo_id", "source_path", "path", "url", "class_id", "class_name", "status",
    "detail", "title", "owner", "tags", "gold_label", "model", "prompt_version", "run_id",
)  # fmt: skip
_SAFE_ID = re.compile(r"^[a-z][a-z0-9_]*$")  # class ids, as taxonomies enforce


def score_column(class_id: str) -> str:
    """The export column of one class's score: ``score_<class id>``."""
    return f"score_{class_id}"


def prediction_rows_sql(ws: Workspace, run_id: str) -> tuple[str, list[Any]]:
    """SQL and arguments for one row per photo of run ``run_id``.

    Columns: the user's ``id`` (the manifest id of the photo's first reference) and
    ``ids`` (every manifest id of the photo, ``;``-separated, when it was found more than
    once), ``photo_id`` (the SHA-256 of its bytes), ``source_path`` (the path or URL the
    user gave), ``path`` (where the workspace reads it), the prediction, the photo's
    metadata, and one ``score_<class>`` column per class of the taxonomy.
    """
    classes = ws.taxonomy.all_classes
    assert all(_SAFE_ID.match(c.id) for c in classes)  # taxonomies validate ids
    scores = ",\n       ".join(
        f"TRY_CAST(json_extract(p.scores, '$.{c.id}') AS DOUBLE) AS \"{score_column(c.id)}\""
        for c in classes
    )
    sql = f"""
WITH user_refs AS (
    SELECT photo_id,
           first(manifest_id ORDER BY added_at, ref) FILTER (WHERE manifest_id IS NOT NULL)
               AS id,
           string_agg(DISTINCT manifest_id, ';' ORDER BY manifest_id) AS ids,
           first(coalesce(path, url) ORDER BY added_at, ref) AS source_path
    FROM refs WHERE photo_id IS NOT NULL GROUP BY photo_id
)
SELECT u.id, u.ids, p.photo_id, u.source_path, v.path, p.class_id,
       map_extract_value(MAP(?::VARCHAR[], ?::VARCHAR[]), p.class_id) AS class_name,
       p.confidence, p.status, p.detail, v.lat, v.lon, v.title, v.owner, v.taken_at, v.tags,
       v.url, v.label AS gold_label, p.model, p.prompt_version, p.seconds, p.tokens_in,
       p.tokens_out, p.cost,
       {scores},
       p.run_id
FROM predictions p
LEFT JOIN photo_view v USING (photo_id)
LEFT JOIN user_refs u USING (photo_id)
WHERE p.run_id = ?
ORDER BY p.photo_id
"""
    return sql, [[c.id for c in classes], [c.name for c in classes], run_id]


def neutralised_sql(sql: str) -> str:
    """``sql`` with every text cell that a spreadsheet would run as a formula prefixed
    with an apostrophe, which spreadsheets show as text."""
    replace = ", ".join(
        f"CASE WHEN regexp_matches({c}, '^[=+\\-@\\t\\r]') THEN '''' || {c} ELSE {c} END AS {c}"
        for c in TEXT_COLUMNS
    )
    return f"SELECT * REPLACE ({replace}) FROM ({sql})"


def copy_rows(ws: Workspace, sql: str, args: Sequence[Any], path: Path, fmt: str) -> int:
    """Write the rows of ``sql`` to ``path`` as ``csv`` or ``parquet`` with DuckDB's
    ``COPY`` (streamed: memory does not grow with the rows); returns the row count."""
    options = "(FORMAT csv, HEADER)" if fmt == "csv" else "(FORMAT parquet)"
    ws.db.execute(f"COPY ({sql}) TO ? {options}", [*args, str(path)])
    return int(ws.db.execute(f"SELECT count(*) FROM ({sql})", list(args)).fetchone()[0])


def iter_rows(
    ws: Workspace, sql: str, args: Sequence[Any], batch_size: int = 5000
) -> Iterator[dict[str, Any]]:
    """The rows of ``sql`` as dicts, fetched ``batch_size`` at a time."""
    cur = ws.db.cursor()  # its own cursor: other queries may run while this one streams
    try:
        cur.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        while rows := cur.fetchmany(batch_size):
            for row in rows:
                yield dict(zip(cols, row, strict=True))
    finally:
        cur.close()


def _located_photos_sql(run_id: str | None) -> tuple[str, list]:
    """Geotagged photos with their class ``k``: a run's classes, or the gold labels."""
    if run_id:
        source = """
            SELECT v.*, coalesce(p.class_id, '(rejected)') AS k, p.confidence
            FROM photo_view v JOIN predictions p
              ON p.photo_id = v.photo_id AND p.run_id = ? AND p.status IN ('ok', 'rejected')
        """
        return source, [run_id]
    source = (
        "SELECT v.*, v.label AS k, NULL AS confidence FROM photo_view v WHERE v.label IS NOT NULL"
    )
    return source, []


def map_points(ws: Workspace, run_id: str | None, limit: int) -> tuple[int, list[dict]]:
    """How many geotagged photos there are, and a deterministic sample of ``limit``."""
    source, args = _located_photos_sql(run_id)
    total = ws.db.execute(
        f"SELECT count(*) FROM ({source}) WHERE lat IS NOT NULL AND lon IS NOT NULL", args
    ).fetchone()[0]
    cur = ws.db.execute(
        f"SELECT photo_id, k, confidence, lat, lon, title, owner, taken_at FROM ({source}) "
        "WHERE lat IS NOT NULL AND lon IS NOT NULL ORDER BY hash(photo_id), photo_id LIMIT ?",
        [*args, limit],
    )
    cols = [d[0] for d in cur.description]
    return int(total), [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _period_sql(by: str | None) -> str:
    if by is None:
        return "NULL"
    if by == "month":
        return "coalesce(lpad(CAST(month(taken_at) AS VARCHAR), 2, '0'), 'undated')"
    # Meteorological seasons; the southern hemisphere's are six months apart.
    return """CASE WHEN taken_at IS NULL THEN 'undated'
        ELSE CASE (month(taken_at) + CASE WHEN lat < 0 THEN 6 ELSE 0 END) % 12
        WHEN 0 THEN 'winter' WHEN 1 THEN 'winter' WHEN 2 THEN 'winter'
        WHEN 3 THEN 'spring' WHEN 4 THEN 'spring' WHEN 5 THEN 'spring'
        WHEN 6 THEN 'summer' WHEN 7 THEN 'summer' WHEN 8 THEN 'summer'
        ELSE 'autumn' END END"""


def photo_user_day_cells_sql(
    run_id: str | None, cell_km: float, by: str | None = None
) -> tuple[str, list]:
    """SQL for photo-user-days per class, grid cell (and period): distinct (owner, day)
    pairs per cell.

    Cells are ``cell_km`` tall; their width in degrees of longitude follows the latitude of
    their row, so they stay about ``cell_km`` wide. A photo without an owner counts as its
    own user; photos without a date count as one undated day of their owner. ``by``
    (``month`` of the year, or ``season``) splits the counts by when photos were taken.

    Columns: ``k`` (class), ``period``, ``r``, ``c`` (grid row and column), ``dlat``,
    ``dlon`` (the cell's size in degrees), ``pud`` and ``photos``.
    """
    assert cell_km > 0 and by in (None, *PERIODS)
    source, args = _located_photos_sql(run_id)
    dlat = cell_km / KM_PER_DEG_LAT
    sql = f"""
        WITH pts AS (
            SELECT k, lat, lon, floor(lat / {dlat!r}) AS r, {_period_sql(by)} AS period,
                   coalesce(owner, 'photo:' || photo_id) || '|' ||
                   coalesce(CAST(CAST(taken_at AS DATE) AS VARCHAR), 'undated') AS user_day
            FROM ({source}) WHERE lat IS NOT NULL AND lon IS NOT NULL
        ), sized AS (
            SELECT *, {cell_km!r} / ({KM_PER_DEG_LON} *
                   greatest(cos(radians((r + 0.5) * {dlat!r})), 0.01)) AS dlon
            FROM pts
        )
        SELECT k, period, r, floor(lon / dlon) AS c, CAST({dlat!r} AS DOUBLE) AS dlat,
               any_value(dlon) AS dlon,
               count(DISTINCT user_day) AS pud, count(*) AS photos
        FROM sized GROUP BY k, period, r, c
    """
    return sql, args


def photo_user_day_totals(
    ws: Workspace, run_id: str | None, cell_km: float
) -> dict[str, dict[str, int]]:
    """Class -> ``{"pud", "cells", "photos"}`` summed over every cell."""
    sql, args = photo_user_day_cells_sql(run_id, cell_km)
    rows = ws.db.execute(
        f"SELECT k, sum(pud), count(*), sum(photos) FROM ({sql}) GROUP BY k ORDER BY k", args
    ).fetchall()
    return {k: {"pud": int(p), "cells": int(n), "photos": int(ph)} for k, p, n, ph in rows}


def photo_user_day_cells(
    ws: Workspace,
    run_id: str | None,
    cell_km: float,
    by: str | None = None,
    max_cells: int = 0,
) -> Iterator[dict[str, Any]]:
    """Cells with ``class``, ``period``, ``bounds`` (south, west, north, east), ``pud`` and
    ``photos``, most photo-user-days first (the ``max_cells`` first when that is set)."""
    sql, args = photo_user_day_cells_sql(run_id, cell_km, by)
    limit = f"LIMIT {int(max_cells)}" if max_cells else ""
    ordered = f"SELECT * FROM ({sql}) ORDER BY pud DESC, k, period NULLS FIRST, r, c {limit}"
    for row in iter_rows(ws, ordered, args):
        r, c, dlat, dlon = row["r"], row["c"], row["dlat"], row["dlon"]
        yield {
            "class": row["k"],
            "period": row["period"],
            "bounds": (r * dlat, c * dlon, (r + 1) * dlat, (c + 1) * dlon),
            "pud": int(row["pud"]),
            "photos": int(row["photos"]),
        }


__all__ = [
    "PERIODS",
    "copy_rows",
    "iter_rows",
    "map_points",
    "neutralised_sql",
    "photo_user_day_cells",
    "photo_user_day_totals",
    "prediction_rows_sql",
    "score_column",
]
