"""Export a run's predictions joined to the photos' metadata: CSV, Parquet or GeoJSON.

The format follows the output file's extension. CSV and Parquet are written by DuckDB's
``COPY`` straight from the catalog, so memory does not grow with the number of photos;
GeoJSON is streamed feature by feature (photos without coordinates get a null geometry,
which GeoJSON allows).
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from pathlib import Path
from typing import Any

from naturelens.errors import NaturelensError
from naturelens.workspace import reports
from naturelens.workspace.core import Workspace

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".geojson": "geojson"}


class ExportError(NaturelensError, ValueError):
    """The export cannot be written as asked."""


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
    output.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a failed export leaves no half file.
    partial = output.with_name(output.name + ".partial")
    try:
        if fmt == "geojson":
            count = _write_geojson(ws, run["run_id"], partial, batch_size)
        else:
            count = reports.copy_export(ws, run["run_id"], str(partial), fmt)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return int(count)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _write_geojson(ws: Workspace, run_id: str, path: Path, batch_size: int) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for row in reports.iter_export(ws, run_id, batch_size):
            props = {c: _json_value(v) for c, v in row.items()}
            if props["scores"]:
                props["scores"] = json.loads(props["scores"])
            lat, lon = props.pop("lat"), props.pop("lon")
            geometry = (
                {"type": "Point", "coordinates": [lon, lat]}
                if lat is not None and lon is not None
                else None
            )
            feature = {"type": "Feature", "geometry": geometry, "properties": props}
            fh.write(("" if count == 0 else ",\n") + json.dumps(feature, ensure_ascii=False))
            count += 1
        fh.write("\n]}\n")
    return count
