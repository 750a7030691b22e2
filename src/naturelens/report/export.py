"""Export a run's predictions joined to the photos' metadata (CSV, Parquet or GeoJSON),
and photo-user-days on a grid (GeoJSON).

The format follows the output file's extension. Rows are one per photo and carry the
user's own ``id`` and ``source_path`` beside the workspace's ``photo_id``, one
``score_<class>`` column per class and the conformal ``prediction_set`` where the run has
one, so they join to the user's tables in R, QGIS or a spreadsheet without parsing JSON.
CSV cells a spreadsheet would run as a formula are neutralised. CSV and Parquet are
written by DuckDB's ``COPY`` straight from the catalog and GeoJSON is streamed feature by
feature, so memory does not grow with the number of photos; photos without coordinates get
a null geometry, which GeoJSON allows.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import date, datetime
from pathlib import Path
from typing import Any

from naturelens.errors import NaturelensError
from naturelens.workspace import reports
from naturelens.workspace.core import Workspace

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".geojson": "geojson"}
# Kilometres per degree of latitude, and of longitude at the equator (WGS84, rounded).
KM_PER_DEG_LAT = 110.574
KM_PER_DEG_LON = 111.320


class ExportError(NaturelensError, ValueError):
    """The export cannot be written as asked."""


def check_writable(output: Path, error: type[NaturelensError] = ExportError) -> None:
    """Raise ``error`` now, before any work, when ``output`` cannot be written (a folder,
    a device or pipe, no permission, a read-only file system); leaves nothing behind."""
    target = Path(os.path.realpath(output))
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        if target.exists() and not target.is_file():
            # The file is written beside it and renamed over it: that would replace a
            # device or a pipe itself, not write into it.
            raise OSError(errno.EINVAL, "it is not a regular file (a device, pipe or socket)")
        partial.touch()
        partial.unlink()
    except OSError as exc:
        raise _cannot_write(output, exc, error) from None


@contextmanager
def written_whole(output: Path, error: type[NaturelensError] = ExportError) -> Iterator[Path]:
    """Write next to ``output`` and rename, so a failed write leaves no half file; a path
    that cannot be written (see :func:`check_writable`, or a full disk) raises ``error``.
    A link is written through, to its file."""
    check_writable(output, error)
    target = Path(os.path.realpath(output))
    partial = target.with_name(target.name + ".partial")
    try:
        yield partial
        os.replace(partial, target)
    except OSError as exc:
        raise _cannot_write(output, exc, error) from None
    finally:
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def _cannot_write(output: Path, exc: OSError, error: type[NaturelensError]) -> NaturelensError:
    return error(f"cannot write {output}: {exc.strerror or exc}", "choose another --output path")


def export_run(
    ws: Workspace, run_id: str | None, output: str | Path, batch_size: int = 5000
) -> int:
    """Write run ``run_id`` (the latest finished when None) to ``output``; returns the row count.

    Parameters
    ----------
    ws
        The workspace.
    run_id
        The run to export.
    output
        ``.csv``, ``.parquet`` (or ``.pq``) or ``.geojson``.
    batch_size
        Rows per fetch when streaming GeoJSON.

    Raises
    ------
    ExportError
        For an extension that names no supported format.
    """
    output = Path(output)
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise ExportError(
            f"{output}: unknown format {output.suffix!r}; use one of {', '.join(FORMATS)}"
        )
    run = ws.run(run_id)  # raises a clear error for an unknown run
    with written_whole(output) as partial:
        if fmt == "geojson":
            rows = reports.iter_export(ws, run["run_id"], batch_size)
            return _write_features(partial, (_point_feature(row) for row in rows))
        return int(reports.copy_export(ws, run["run_id"], str(partial), fmt))


def export_photo_user_days(
    ws: Workspace,
    run_id: str | None,
    output: str | Path,
    cell_km: float = 1.0,
    by: str | None = None,
) -> int:
    """Write photo-user-days per class and grid cell as GeoJSON polygons; returns the count.

    Each feature is one cell of about ``cell_km`` by ``cell_km`` and one class (and one
    period with ``by``: ``month`` of the year ``01``..``12`` or ``season``, ``undated``
    for photos without a date), with ``class_id``, ``class_name``, ``pud`` (distinct
    user-days), ``photos`` and ``cell_km``. Coordinates are WGS84 longitude/latitude, as
    GeoJSON requires; QGIS and R's ``sf::st_read`` read the file as is.

    Parameters
    ----------
    run_id
        The run whose classes are counted (the latest finished when None).
    by
        None, ``month`` or ``season``.
    """
    output = Path(output)
    if output.suffix.lower() != ".geojson":
        raise ExportError(f"{output}: photo-user-days are written as GeoJSON (.geojson)")
    if cell_km <= 0:
        raise ExportError("--cell-km must be positive")
    if by not in (None, *reports.PERIODS):
        raise ExportError(f"--by must be one of {', '.join(reports.PERIODS)}, not {by!r}")
    run = ws.run(run_id)
    names = {c.id: c.name for c in ws.taxonomy.all_classes}
    dlat = cell_km / KM_PER_DEG_LAT

    def features() -> Iterator[dict[str, Any]]:
        cells = reports.iter_grid_cells(ws, run["run_id"], dlat, cell_km, KM_PER_DEG_LON, by)
        for cell in cells:
            s, n = cell["r"] * dlat, (cell["r"] + 1) * dlat
            w, e = cell["c"] * cell["dlon"], (cell["c"] + 1) * cell["dlon"]
            props = {
                "class_id": cell["k"],
                "class_name": names.get(cell["k"], cell["k"]),
                **({by: cell["period"]} if by else {}),
                "pud": int(cell["pud"]),
                "photos": int(cell["photos"]),
                "cell_km": cell_km,
                "run_id": run["run_id"],
            }
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            yield {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": props,
            }

    with written_whole(output) as partial:
        return _write_features(partial, features())


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _point_feature(row: dict[str, Any]) -> dict[str, Any]:
    props = {c: _json_value(v) for c, v in row.items()}
    lat, lon = props.pop("lat"), props.pop("lon")
    geometry = (
        {"type": "Point", "coordinates": [lon, lat]}
        if lat is not None and lon is not None
        else None
    )
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write_features(path: Path, features: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for feature in features:
            fh.write(("" if count == 0 else ",\n") + json.dumps(feature, ensure_ascii=False))
            count += 1
        fh.write("\n]}\n")
    return count
