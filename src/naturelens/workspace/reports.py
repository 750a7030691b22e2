"""Queries behind the HTML report and the exports: read-only views of a run joined to the
photos' metadata. Every function takes the run's id, or None for "no run yet" where the
report falls back on the gold labels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import duckdb

from naturelens.workspace.core import Workspace

# What a prediction counts as in the report: its class, the rejected bucket, or this.
NOT_CLASSIFIED = "(not classified)"

_ANSWER = f"""CASE WHEN status = 'ok' THEN class_id
            WHEN status = 'rejected' THEN coalesce(class_id, '(rejected)')
            ELSE '{NOT_CLASSIFIED}' END"""


def _records(cur) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def class_counts(ws: Workspace, run_id: str | None) -> tuple[dict[str, int], dict[str, int]]:
    """(gold labels per class, the run's answers per class); the second is empty without a run."""
    gold = dict(
        ws.db.execute(
            "SELECT label, count(*) FROM photo_view WHERE label IS NOT NULL GROUP BY 1"
        ).fetchall()
    )
    predicted: dict[str, int] = {}
    if run_id:
        predicted = dict(
            ws.db.execute(
                f"SELECT {_ANSWER} AS k, count(*) FROM predictions WHERE run_id = ? GROUP BY 1",
                [run_id],
            ).fetchall()
        )
    return gold, predicted


def gallery_rows(ws: Workspace, run_id: str | None, half: int) -> list[dict[str, Any]]:
    """Per answer, the ``half`` most and ``half`` least confident photos with their metadata
    (without a run: up to ``2 * half`` photos per gold label)."""
    if run_id:
        sql = f"""
        WITH p AS (
            SELECT photo_id, confidence, detail, {_ANSWER} AS k
            FROM predictions WHERE run_id = ?
        ), ranked AS (
            SELECT *,
              row_number() OVER (PARTITION BY k ORDER BY confidence DESC NULLS LAST, photo_id)
                  AS hi,
              row_number() OVER (PARTITION BY k ORDER BY confidence ASC NULLS FIRST, photo_id)
                  AS lo,
              count(*) OVER (PARTITION BY k) AS total
            FROM p
        )
        SELECT r.k, r.photo_id, r.confidence, r.detail, r.total, v.path, v.title, v.owner,
               v.taken_at, v.tags, v.label
        FROM ranked r LEFT JOIN photo_view v USING (photo_id)
        WHERE r.hi <= ? OR r.lo <= ?
        ORDER BY r.k, r.confidence DESC NULLS LAST, r.photo_id
        """
        args: list[Any] = [run_id, half, half]
    else:
        sql = """
        WITH ranked AS (
            SELECT *, label AS k, row_number() OVER (PARTITION BY label ORDER BY photo_id) AS hi,
                   count(*) OVER (PARTITION BY label) AS total
            FROM photo_view WHERE label IS NOT NULL
        )
        SELECT k, photo_id, NULL AS confidence, '' AS detail, total, path, title, owner,
               taken_at, tags, label
        FROM ranked WHERE hi <= ? ORDER BY k, photo_id
        """
        args = [2 * half]
    return _records(ws.db.execute(sql, args))


def disagreements(ws: Workspace, run_ids: list[str], limit: int) -> tuple[int, list[tuple]]:
    """Photos that at least two of ``run_ids`` answered differently (failures are not
    answers): how many in all, and for the ``limit`` most disputed, one row per run:
    (photo_id, answers, run_id, class_id, status, confidence, path, title, owner, label)."""
    base = """
        SELECT photo_id,
               count(DISTINCT coalesce(class_id, '(rejected)'))
                   FILTER (WHERE status IN ('ok', 'rejected')) AS answers
        FROM predictions WHERE run_id IN (SELECT unnest(?)) GROUP BY photo_id
    """
    total = ws.db.execute(f"SELECT count(*) FROM ({base}) WHERE answers > 1", [run_ids]).fetchone()[
        0
    ]
    rows = ws.db.execute(
        f"""
        WITH d AS (SELECT * FROM ({base}) WHERE answers > 1
                   ORDER BY answers DESC, photo_id LIMIT ?)
        SELECT d.photo_id, d.answers, p.run_id, p.class_id, p.status, p.confidence,
               v.path, v.title, v.owner, v.label
        FROM d JOIN predictions p ON p.photo_id = d.photo_id AND p.run_id IN (SELECT unnest(?))
        LEFT JOIN photo_view v ON v.photo_id = d.photo_id
        ORDER BY d.answers DESC, d.photo_id
        """,
        [run_ids, limit, run_ids],
    ).fetchall()
    return int(total), rows


def _placed(run_id: str | None) -> tuple[str, list]:
    """Photos with their class (``k``) and confidence: the run's answers, or gold labels."""
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


PERIODS = ("month", "season")


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


def _grid_sql(
    run_id: str | None, dlat: float, cell_km: float, km_per_deg_lon: float, by: str | None
) -> tuple[str, list]:
    assert by in (None, *PERIODS)
    source, args = _placed(run_id)
    sql = f"""
        WITH pts AS (
            SELECT k, lat, lon, floor(lat / {dlat!r}) AS r, {_period_sql(by)} AS period,
                   coalesce(owner, 'photo:' || photo_id) || '|' ||
                   coalesce(CAST(CAST(taken_at AS DATE) AS VARCHAR), 'undated') AS user_day
            FROM ({source}) WHERE lat IS NOT NULL AND lon IS NOT NULL
        ), sized AS (
            SELECT *, {cell_km!r} / ({km_per_deg_lon!r} *
                   greatest(cos(radians((r + 0.5) * {dlat!r})), 0.01)) AS dlon
            FROM pts
        )
        SELECT k, period, r, floor(lon / dlon) AS c, any_value(dlon) AS dlon,
               count(DISTINCT user_day) AS pud, count(*) AS photos
        FROM sized GROUP BY k, period, r, c
    """
    return sql, args


def grid_cells(
    ws: Workspace,
    run_id: str | None,
    dlat: float,
    cell_km: float,
    km_per_deg_lon: float,
    max_cells: int = 0,
) -> tuple[list[tuple], list[tuple]]:
    """Photo-user-days per grid cell and class over every geotagged photo.

    Rows are ``dlat`` degrees tall; a cell's width in degrees of longitude follows the
    latitude of its row so that it stays about ``cell_km`` wide. Returns (totals, cells):
    totals as (class, pud, cells, photos) per class; cells as (class, row, column,
    dlon, pud, photos), most photo-user-days first (the first ``max_cells`` when set).
    """
    sql, args = _grid_sql(run_id, dlat, cell_km, km_per_deg_lon, None)
    totals = ws.db.execute(
        f"SELECT k, sum(pud), count(*), sum(photos) FROM ({sql}) GROUP BY k ORDER BY k", args
    ).fetchall()
    limit = f"LIMIT {int(max_cells)}" if max_cells else ""
    cells = ws.db.execute(
        f"SELECT k, r, c, dlon, pud, photos FROM ({sql}) ORDER BY pud DESC, k, r, c {limit}", args
    ).fetchall()
    return totals, cells


def iter_grid_cells(
    ws: Workspace,
    run_id: str | None,
    dlat: float,
    cell_km: float,
    km_per_deg_lon: float,
    by: str | None = None,
    batch_size: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Every cell of :func:`grid_cells`, streamed, split by ``by`` (``month`` of the year,
    ``season``, or None): dicts with ``k``, ``period``, ``r``, ``c``, ``dlon``, ``pud`` and
    ``photos``. Photos without a date fall in the period ``undated``."""
    sql, args = _grid_sql(run_id, dlat, cell_km, km_per_deg_lon, by)
    ordered = f"SELECT * FROM ({sql}) ORDER BY k, period NULLS FIRST, r, c"
    yield from _stream(ws, ordered, args, batch_size)


def map_points(ws: Workspace, run_id: str | None, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """How many photos are geotagged, and a deterministic sample of at most ``limit``."""
    source, args = _placed(run_id)
    total = ws.db.execute(
        f"SELECT count(*) FROM ({source}) WHERE lat IS NOT NULL AND lon IS NOT NULL", args
    ).fetchone()[0]
    cur = ws.db.execute(
        f"SELECT photo_id, k, confidence, lat, lon, title, owner, taken_at FROM ({source}) "
        "WHERE lat IS NOT NULL AND lon IS NOT NULL ORDER BY hash(photo_id), photo_id LIMIT ?",
        [*args, limit],
    )
    return int(total), _records(cur)


# Text columns a spreadsheet could run as a formula when a cell starts with one of = + - @
# (or a tab / carriage return that hides one): see OWASP's "CSV injection".
TEXT_COLUMNS = (
    "id", "ids", "photo_id", "source_path", "path", "url", "class_id", "class_name", "status",
    "detail", "title", "owner", "tags", "gold_label", "prediction_set", "model",
    "prompt_version", "run_id",
)  # fmt: skip


def score_column(class_id: str) -> str:
    """The export column of one class's score: ``score_<class id>``."""
    return f"score_{class_id}"


def _export_sql(ws: Workspace, run_id: str) -> tuple[str, list]:
    """One row per photo of the workspace, with the run's prediction where it made one.

    A photo the run trained on (a gold-labelled photo) has no prediction: its row carries
    the gold label as its class and the status ``labelled``; a photo the run did not reach
    has the status ``not predicted``.

    Columns: the user's ``id`` (the manifest id of the photo's first reference) and
    ``ids`` (every manifest id of the photo, ``;``-separated, when it was listed more
    than once), ``photo_id`` (the SHA-256 of its bytes), ``source_path`` (the path or URL
    the user gave), ``path`` (where the workspace reads it), the prediction and the
    conformal ``prediction_set`` (``;``-separated class ids, where the run has one), the
    photo's metadata, and one ``score_<class>`` column per class of the taxonomy.
    """
    classes = ws.taxonomy.all_classes
    # Class ids are lower-case letters, digits and underscores (taxonomies enforce it), so
    # they are safe inside a JSON path and a column name.
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c.id) for c in classes)
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
SELECT u.id, u.ids, v.photo_id, u.source_path, v.path,
       coalesce(p.class_id, CASE WHEN p.photo_id IS NULL THEN v.label END) AS class_id,
       map_extract_value(
           MAP(?::VARCHAR[], ?::VARCHAR[]),
           coalesce(p.class_id, CASE WHEN p.photo_id IS NULL THEN v.label END)
       ) AS class_name,
       p.confidence,
       coalesce(p.status, CASE WHEN v.label IS NOT NULL THEN 'labelled' ELSE 'not predicted'
                END) AS status,
       p.detail,
       array_to_string(TRY_CAST(from_json(p.prediction_set, '["VARCHAR"]') AS VARCHAR[]), ';')
           AS prediction_set,
       v.lat, v.lon, v.title, v.owner, v.taken_at, v.tags,
       v.url, v.label AS gold_label, p.model, p.prompt_version, p.seconds, p.tokens_in,
       p.tokens_out, p.cost,
       {scores},
       ?::VARCHAR AS run_id
FROM photo_view v
LEFT JOIN predictions p ON p.photo_id = v.photo_id AND p.run_id = ?
LEFT JOIN user_refs u ON u.photo_id = v.photo_id
ORDER BY v.photo_id
"""
    return sql, [[c.id for c in classes], [c.name for c in classes], run_id, run_id]


def _neutralised(sql: str) -> str:
    """``sql`` with every text cell that a spreadsheet would run as a formula prefixed with
    an apostrophe, which spreadsheets show as text."""
    replace = ", ".join(
        f"CASE WHEN regexp_matches({c}, '^[=+\\-@\\t\\r]') THEN '''' || {c} ELSE {c} END AS {c}"
        for c in TEXT_COLUMNS
    )
    return f"SELECT * REPLACE ({replace}) FROM ({sql})"


def copy_export(ws: Workspace, run_id: str, path: str, fmt: str) -> int:
    """Write the run's export rows to ``path`` as ``csv`` (formulas neutralised) or
    ``parquet`` with DuckDB's ``COPY`` (streamed from the catalog); returns the row count."""
    options = {"csv": "(FORMAT csv, HEADER)", "parquet": "(FORMAT parquet)"}[fmt]
    sql, args = _export_sql(ws, run_id)
    if fmt == "csv":
        sql = _neutralised(sql)
    try:
        ws.db.execute(f"COPY ({sql}) TO ? {options}", [*args, path])
    except duckdb.IOException as exc:  # the file written, not the catalog (a full disk)
        raise OSError(" ".join(str(exc).split())) from None
    return ws.db.execute("SELECT count(*) FROM photo_view").fetchone()[0]


def iter_export(ws: Workspace, run_id: str, batch_size: int) -> Iterator[dict[str, Any]]:
    """The run's export rows one at a time, fetched ``batch_size`` at once."""
    sql, args = _export_sql(ws, run_id)
    yield from _stream(ws, sql, args, batch_size)


def _stream(ws: Workspace, sql: str, args: list, batch_size: int) -> Iterator[dict[str, Any]]:
    cur = ws.db.cursor()  # its own cursor: other queries may run while this one streams
    try:
        cur.execute(sql, args)
        cols = [d[0] for d in cur.description]
        while rows := cur.fetchmany(batch_size):
            for row in rows:
                yield dict(zip(cols, row, strict=True))
    finally:
        cur.close()
