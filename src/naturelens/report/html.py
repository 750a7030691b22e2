"""The HTML report: what a run found, shown rather than told.

Sections: class distribution; per-class galleries of thumbnails with confidence (most and
least confident first, paged in the browser); photos on which methods disagree, as a list
to review; the run's scores, per-class report and confusion matrix; the comparison table;
a map of geotagged photos coloured by class with photo-user-days per grid cell.

Scale: thumbnails are made once and kept in the workspace
(``cache/thumbs/<photo_id>_<size>.jpg``); galleries carry at most ``gallery_limit`` photos
per class (the most and the least confident halves) and are paged client-side from one
JSON block; the map shows a deterministic sample of at most ``map_points`` photos, while
photo-user-days are counted over every geotagged photo in the database.

Safety: every text that comes from the data (titles, tags, owners, file names, model
answers, class names) is escaped. The page is rendered by Jinja2 with autoescaping; data
for the page's scripts sits in a ``<script type="application/json">`` block written with
``tojson`` (which escapes ``<``, ``>``, ``&`` and ``'``, so no ``</script>`` or ``<!--``
can end it) and is put on the page with ``textContent``, never ``innerHTML``. The map
(``report/map.py``, Leaflet shipped in the package) shows tooltips and layer names through
``innerHTML``, so those strings are HTML-escaped before they reach it. The whole report,
map included, works offline; map tiles show when a tile server can be reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from naturelens._version import __version__
from naturelens.errors import NaturelensError
from naturelens.evaluation.compare import format_accuracy, format_energy, latest_comparison
from naturelens.evaluation.metrics import EvaluationError, evaluate_run
from naturelens.report.export import (
    KM_PER_DEG_LAT,
    KM_PER_DEG_LON,
    check_writable,
    written_whole,
)
from naturelens.report.map import build_map
from naturelens.sources.images import PhotoDecodeError, load_photo
from naturelens.workspace import reports
from naturelens.workspace.core import Workspace, WorkspaceError, now
from naturelens.workspace.reports import NOT_CLASSIFIED

# Distinct colours for classes, in taxonomy order (Tableau 10, then 10 lighter ones).
PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#17becf", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a",
    "#86bcb6", "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#bab0ac",
]  # fmt: skip
REJECTED_COLOUR = "#7f7f7f"


@dataclass
class ReportOptions:
    """What goes into a report.

    Parameters
    ----------
    run_id
        The run to show; default the latest finished run (gold labels when there is none).
    title
        The page title.
    cell_km
        Grid cell size for photo-user-days, in kilometres.
    thumb_size
        Longest side of the thumbnails, in pixels.
    gallery_limit
        Most photos per class in the galleries (half most, half least confident);
        0 for every photo.
    page_size
        Photos per gallery page.
    map_points
        Most photos drawn on the map (a deterministic sample when there are more).
    map_cells
        Most grid cells drawn on the map (those with the most photo-user-days).
    review_limit
        Most photos listed as disagreements.
    embed_thumbs
        Put the thumbnails inside the HTML (a single file to share) instead of linking
        to the workspace's thumbnail cache.
    """

    run_id: str | None = None
    title: str = "naturelens report"
    cell_km: float = 1.0
    thumb_size: int = 160
    gallery_limit: int = 2000
    page_size: int = 48
    map_points: int = 20000
    map_cells: int = 20000
    review_limit: int = 1000
    embed_thumbs: bool = False


class ReportError(NaturelensError, ValueError):
    """The report cannot be written as asked."""


# ---------------------------------------------------------------------------- thumbnails
def thumbnail_path(ws: Workspace, photo_id: str, size: int) -> Path:
    """Where the thumbnail of ``photo_id`` at ``size`` pixels is cached."""
    return ws.root / "cache" / "thumbs" / f"{photo_id}_{size}.jpg"


def make_thumbnails(
    ws: Workspace,
    photo_ids: Iterable[str],
    size: int = 160,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path | None]:
    """Make the thumbnails that are not cached yet; returns photo id -> path (None when the
    photo cannot be decoded)."""
    ids = list(dict.fromkeys(photo_ids))
    paths = ws.photo_paths(ids)
    folder = ws.root / "cache" / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)

    def one(pid: str) -> Path | None:
        target = thumbnail_path(ws, pid, size)
        if target.exists():
            return target
        source = paths.get(pid)
        if source is None:
            return None
        try:
            img = load_photo(source, max_side=size)
        except PhotoDecodeError:
            return None
        img.thumbnail((size, size))
        partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.jpg")
        img.save(partial, "JPEG", quality=82)
        os.replace(partial, target)  # atomic: a reader never sees half a file
        return target

    out: dict[str, Path | None] = {}
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for pid, path in zip(ids, pool.map(one, ids), strict=True):
            out[pid] = path
            if progress:
                progress(1)
    return out


def _file_url(path: Path, base: Path) -> str:
    """A relative URL from the report's folder to ``path`` (absolute when impossible)."""
    try:
        rel = os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()
    return quote(Path(rel).as_posix())


def _data_url(path: Path) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ---------------------------------------------------------------------------- data
def _class_meta(ws: Workspace) -> dict[str, dict[str, str]]:
    meta = {}
    for i, c in enumerate(ws.taxonomy.classes):
        meta[c.id] = {"name": c.name, "colour": PALETTE[i % len(PALETTE)]}
    if ws.taxonomy.open_set:
        meta[ws.taxonomy.open_set.id] = {
            "name": ws.taxonomy.open_set.name,
            "colour": REJECTED_COLOUR,
        }
    meta["(rejected)"] = {"name": "Rejected", "colour": REJECTED_COLOUR}
    meta[NOT_CLASSIFIED] = {"name": "Not classified", "colour": "#444444"}
    return meta


def _choose_run(ws: Workspace, run_id: str | None) -> dict[str, Any] | None:
    if run_id is not None:
        return ws.run(run_id)
    try:
        return ws.run()
    except WorkspaceError:
        return None  # no finished run yet: the report shows the gold labels


def _distribution(ws: Workspace, run: dict | None) -> list[dict[str, Any]]:
    gold, predicted = reports.class_counts(ws, run["run_id"] if run else None)
    meta = _class_meta(ws)
    keys = [k for k in meta if k in gold or k in predicted or k in ws.taxonomy.class_ids]
    keys += sorted((set(gold) | set(predicted)) - set(keys))
    top = max([1, *gold.values(), *predicted.values()])
    return [
        {
            "id": k,
            "name": meta.get(k, {}).get("name", k),
            "colour": meta.get(k, {}).get("colour", "#999999"),
            "predicted": predicted.get(k, 0),
            "gold": gold.get(k, 0),
            "predicted_pct": 100 * predicted.get(k, 0) / top,
            "gold_pct": 100 * gold.get(k, 0) / top,
        }
        for k in keys
    ]


def _gallery_rows(ws: Workspace, run: dict | None, limit: int) -> list[dict[str, Any]]:
    """Photos per class for the galleries: the most and least confident of each class."""
    half = max(1, limit // 2) if limit else 2**62
    return reports.gallery_rows(ws, run["run_id"] if run else None, half)


def _review_runs(ws: Workspace, run: dict | None) -> list[dict[str, Any]]:
    """The chosen run plus the latest finished run of every other method."""
    latest: dict[str, dict] = {}
    for r in ws.runs():
        if r["status"] == "done":
            latest[r["method"]] = r
    if run:
        latest[run["method"]] = run
    return list(latest.values())


def _disagreements(ws: Workspace, runs: list[dict], limit: int) -> tuple[int, list[dict]]:
    """Photos that at least two runs classified differently (failures are not opinions)."""
    if len(runs) < 2:
        return 0, []
    total, rows = reports.disagreements(ws, [r["run_id"] for r in runs], limit)
    items: dict[str, dict] = {}
    for pid, answers, run_id, cls, status, conf, path, title, owner, label in rows:
        item = items.setdefault(
            pid,
            {"photo_id": pid, "answers": answers, "path": path, "title": title,
             "owner": owner, "label": label, "by_run": {}},
        )  # fmt: skip
        answer = cls if status == "ok" else "(rejected)" if status == "rejected" else f"({status})"
        item["by_run"][run_id] = (answer, conf)
    return int(total), list(items.values())


def photo_user_days(
    ws: Workspace, run: dict | None, cell_km: float, max_cells: int = 0
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Photo-user-days per grid cell and class: distinct (owner, day) pairs per cell.

    Cells are ``cell_km`` tall; their width in degrees of longitude follows the latitude
    of their row, so they stay about ``cell_km`` wide. A photo without an owner counts as
    its own user; photos without a date count as one undated day of their owner.

    Returns
    -------
    (cells, totals)
        ``cells``: dicts with class, bounds (south, west, north, east), ``pud`` and
        ``photos`` (the ``max_cells`` with the most photo-user-days when that is set);
        ``totals``: class -> {"pud", "cells", "photos"} over every cell.
    """
    if cell_km <= 0:
        raise ReportError("--cell-km must be positive")
    dlat = cell_km / KM_PER_DEG_LAT
    run_id = run["run_id"] if run else None
    total_rows, rows = reports.grid_cells(ws, run_id, dlat, cell_km, KM_PER_DEG_LON, max_cells)
    totals = {k: {"pud": int(p), "cells": int(n), "photos": int(ph)} for k, p, n, ph in total_rows}
    cells = [
        {
            "class": k,
            "bounds": (r * dlat, c * dlon, (r + 1) * dlat, (c + 1) * dlon),
            "pud": int(pud),
            "photos": int(photos),
        }
        for k, r, c, dlon, pud, photos in rows
    ]
    return cells, totals


def _map_points(ws: Workspace, run: dict | None, limit: int) -> tuple[int, list[dict]]:
    return reports.map_points(ws, run["run_id"] if run else None, limit)


# ---------------------------------------------------------------------------- page
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("naturelens", "templates/report"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f} %"
    env.filters["num"] = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
    env.filters["accuracy"] = format_accuracy
    env.filters["energy"] = format_energy
    return env


def _static(env: jinja2.Environment, name: str) -> Markup:
    """A CSS or JS file of the package, inserted as is (it is code, not data)."""
    source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    return Markup(source)


def _item(row: dict, thumbs: dict[str, Path | None], base: Path, embed: bool) -> dict[str, Any]:
    thumb = thumbs.get(row["photo_id"])
    url = None
    if thumb is not None:
        url = _data_url(thumb) if embed else _file_url(thumb, base)
    taken = row.get("taken_at")
    return {
        "i": row["photo_id"],
        "t": url,
        "u": Path(row["path"]).resolve().as_uri() if row.get("path") else None,
        "c": row.get("confidence"),
        "n": row.get("title") or (Path(row["path"]).name if row.get("path") else ""),
        "o": row.get("owner"),
        "d": str(taken)[:10] if taken else None,
        "g": row.get("label"),
        "x": (row.get("detail") or "")[:300],
    }


def _comparison_rows(ws: Workspace) -> tuple[dict | None, list[dict]]:
    """The latest stored comparison, else one row per finished run."""
    stored = latest_comparison(ws)
    if stored:
        return stored, stored["table"]
    rows = []
    for r in ws.runs():
        if r["status"] != "done":
            continue
        s = r["summary"]
        row = {
            "method": r["run_id"],
            "seeds": 1,
            "labels_used": s.get("labels_used"),
            "accuracy": None,
            "macro_f1": None,
            "balanced_accuracy": None,
            "majority_baseline": None,
            "photos_per_second": None,
            "wall_seconds": s.get("wall_seconds"),
            "tokens": (s.get("tokens_in") or 0) + (s.get("tokens_out") or 0),
            "cost_per_1000": 1000 * s.get("cost", 0) / s["photos"] if s.get("photos") else None,
            "energy_wh": s.get("energy_wh"),
            "energy_measured": s.get("energy_measured"),
            "error": "",
        }
        wall, fit = s.get("wall_seconds"), s.get("fit_seconds") or 0
        if wall and s.get("photos"):
            row["photos_per_second"] = s["photos"] / (wall - fit if wall > fit else wall)
        try:
            ev = evaluate_run(ws, r["run_id"], n_resamples=0)
            for key in ("accuracy", "macro_f1", "balanced_accuracy", "majority_baseline"):
                row[key] = ev[key]
            row["collapsed"] = int(ev["collapsed"])
        except EvaluationError:
            pass
        rows.append(row)
    return None, rows


def build_report(
    ws: Workspace,
    output: str | Path,
    options: ReportOptions | None = None,
    progress: Callable[[str, int], Any] | None = None,
) -> Path:
    """Write the HTML report of ``ws`` to ``output`` and return its path.

    Parameters
    ----------
    ws
        The workspace.
    output
        The HTML file to write (its folder is made).
    options
        What to show (see :class:`ReportOptions`).
    progress
        ``progress(description, total)`` returns a context manager yielding ``advance(n)``;
        used while making thumbnails.
    """
    opts = options or ReportOptions()
    output = Path(output)
    check_writable(output, ReportError)  # before minutes of thumbnails, not after
    if opts.page_size < 1 or opts.thumb_size < 16:
        raise ReportError("page size must be at least 1 and thumbnails at least 16 px")
    run = _choose_run(ws, opts.run_id)
    meta = _class_meta(ws)

    gallery = _gallery_rows(ws, run, opts.gallery_limit)
    review_runs = _review_runs(ws, run)
    review_total, review = _disagreements(ws, review_runs, opts.review_limit)
    wanted = [r["photo_id"] for r in gallery] + [r["photo_id"] for r in review]
    todo = [
        pid
        for pid in dict.fromkeys(wanted)
        if not thumbnail_path(ws, pid, opts.thumb_size).exists()
    ]
    if progress and todo:
        with progress("thumbnails", len(todo)) as advance:
            make_thumbnails(ws, todo, opts.thumb_size, progress=advance)
    elif todo:
        make_thumbnails(ws, todo, opts.thumb_size)
    thumbs = {
        pid: path if (path := thumbnail_path(ws, pid, opts.thumb_size)).exists() else None
        for pid in dict.fromkeys(wanted)
    }
    base = output.parent

    groups: dict[str, dict] = {}
    for row in gallery:
        g = groups.setdefault(
            row["k"],
            {"id": row["k"], "name": meta.get(row["k"], {}).get("name", row["k"]),
             "colour": meta.get(row["k"], {}).get("colour", "#999999"),
             "total": int(row["total"]), "items": []},
        )  # fmt: skip
        g["items"].append(_item(row, thumbs, base, opts.embed_thumbs))
    order = {k: i for i, k in enumerate(meta)}
    gallery_groups = sorted(
        groups.values(), key=lambda g: (order.get(g["id"], len(order)), g["id"])
    )

    review_items = []
    for item in review:
        entry = _item(item, thumbs, base, opts.embed_thumbs)
        entry["a"] = [list(item["by_run"].get(r["run_id"], ("-", None))) for r in review_runs]
        review_items.append(entry)

    evaluation = None
    evaluation_error = ""
    if run:
        try:
            evaluation = evaluate_run(ws, run["run_id"])
        except EvaluationError as exc:
            evaluation_error = str(exc)
    cm_max = max(
        [1, *(v for row in (evaluation or {}).get("confusion", {}).get("matrix", []) for v in row)]
    )
    stored_comparison, comparison = _comparison_rows(ws)

    cells, pud_totals = photo_user_days(ws, run, opts.cell_km, opts.map_cells)
    points_total, points = _map_points(ws, run, opts.map_points)
    map_html = build_map(meta, points, cells, opts.cell_km)

    data = {
        "classes": {k: v for k, v in meta.items()},
        "pageSize": opts.page_size,
        "gallery": gallery_groups,
        "review": {
            "runs": [{"id": r["run_id"], "method": r["method"]} for r in review_runs],
            "items": review_items,
        },
    }
    status = ws.status()
    env = _environment()
    page = env.get_template("report.html.j2").render(
        style=_static(env, "report.css"),
        script=_static(env, "report.js"),
        title=opts.title,
        generated=now().isoformat(timespec="seconds"),
        version=__version__,
        workspace=str(ws.root),
        taxonomy=ws.taxonomy,
        status=status,
        run=run,
        run_params=json.dumps((run or {}).get("params", {}).get("method", {}), default=str),
        distribution=_distribution(ws, run),
        gallery_groups=gallery_groups,
        gallery_limit=opts.gallery_limit,
        review_runs=review_runs,
        review_total=review_total,
        review_shown=len(review_items),
        evaluation=evaluation,
        evaluation_error=evaluation_error,
        estimate=(run or {}).get("summary", {}).get("estimate"),
        cm_max=cm_max,
        class_names={k: v["name"] for k, v in meta.items()},
        comparison=comparison,
        stored_comparison=stored_comparison,
        cell_km=opts.cell_km,
        pud_totals=[
            {
                "id": k,
                "name": meta.get(k, {}).get("name", k),
                "colour": meta.get(k, {}).get("colour", "#999999"),
                **v,
            }
            for k, v in sorted(pud_totals.items(), key=lambda kv: order.get(kv[0], len(order)))
        ],  # fmt: skip
        cells_shown=len(cells),
        cells_total=sum(v["cells"] for v in pud_totals.values()),
        points_total=points_total,
        points_shown=len(points),
        map_html=map_html,
        data=data,
        embed_thumbs=opts.embed_thumbs,
    )
    with written_whole(output, ReportError) as partial:
        partial.write_text(page, encoding="utf-8")
    return output
