"""Photo sources: folders, single photo files, shell globs, manifests (CSV or Parquet) and
URL lists.

A source yields :class:`PhotoRef` records: where a photo's bytes are and what the
collection says about it. Rows that cannot be used keep their reason in ``problem``
so the workspace records them instead of skipping them.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from naturelens.errors import NaturelensError

PHOTO_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
}
MANIFEST_COLUMNS = {
    "id",
    "path",
    "url",
    "label",
    "lat",
    "lon",
    "owner",
    "taken_at",
    "title",
    "tags",
}


class SourceError(NaturelensError, ValueError):
    """A source cannot be read at all (missing file, unknown format, missing columns)."""


@dataclass
class PhotoRef:
    """One reference to a photo, before its bytes are read."""

    ref: str  # unique key of this reference: a path, a URL, or manifest#row-id
    source: str  # "folder", "file", "manifest" or "url"
    path: str | None = None
    url: str | None = None
    manifest_id: str | None = None
    label: str | None = None
    lat: float | None = None
    lon: float | None = None
    owner: str | None = None
    taken_at: datetime | None = None
    title: str | None = None
    tags: str | None = None
    problem: str | None = None  # why this row cannot be used, if it cannot


DUPLICATE_RULES = ("first", "last", "error")
MANIFEST_SUFFIXES = {".csv", ".parquet", ".tsv"}
_GLOB_CHARS = set("*?[")


def iter_source(
    source: str | Path, labels_from_folders: bool = True, duplicates: str = "first"
) -> Iterator[PhotoRef]:
    """Yield the photo references of a folder, a photo file, a glob, a manifest or a URL.

    A glob (``photos/*.jpg``, ``photos/**/*.png``) is expanded here when the shell did not
    (it was quoted, or the shell does not expand globs); each match is read as a source.
    Any other file is a single photo: one that is not an image is recorded as a failure
    with its reason, like any photo that cannot be decoded.

    ``duplicates`` says which row of a manifest wins when an id repeats (see
    :func:`iter_manifest`).
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        yield PhotoRef(ref=text, source="url", url=text)
        return
    path = Path(source)
    if path.is_dir():
        yield from iter_folder(path, labels_from_folders=labels_from_folders)
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        yield from iter_manifest(path, duplicates=duplicates)
    elif path.is_file() and path.suffix.lower() == ".txt":
        yield from iter_url_list(path)
    elif path.is_file():
        full = path.resolve()
        yield PhotoRef(ref=str(full), source="file", path=str(full))
    else:
        check_source(source)  # names nothing, or a pipe or a device: says which
        for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
            yield from iter_source(
                match, labels_from_folders=labels_from_folders, duplicates=duplicates
            )


def check_source(source: str | Path) -> None:
    """Raise :class:`SourceError` when ``source`` names nothing (a typo in a path, a glob
    without matches) or a pipe or a device; ingest checks every source this way before it
    reads any. Only a glob's first match is looked for: expanding it is the reading's job."""
    text = str(source)
    path = Path(source)
    if text.startswith(("http://", "https://")) or path.is_dir() or path.is_file():
        return
    if path.exists():
        raise SourceError(f"{source}: not a photo, a folder, a manifest nor a URL list")
    if not _GLOB_CHARS & set(text):
        raise SourceError(f"{source}: no such file or folder")
    if next(glob.iglob(os.path.expanduser(text), recursive=True), None) is None:
        raise SourceError(f"{source}: no file matches this pattern")


def iter_folder(root: Path, labels_from_folders: bool = True) -> Iterator[PhotoRef]:
    """Every photo file below ``root``, in a stable order.

    With ``labels_from_folders``, a photo's first sub-folder under ``root`` is its raw
    label (``root/Nature/x.jpg`` -> ``Nature``); the workspace matches it to the taxonomy.
    Files with other suffixes are listed too when they are not hidden: a ``.txt`` among
    photos is reported, not silently skipped, unless it is obviously not a photo (no
    suffix of a known photo type and not named like one).

    Symlinked folders are followed (a class folder may live elsewhere); a link that leads
    back to a folder already listed (a loop) is reported as a problem, not followed.
    """
    root = root.resolve()
    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                where = Path(dirpath) / d
                yield PhotoRef(
                    ref=str(where),
                    source="folder",
                    path=str(where),
                    problem=f"symlink loop: folder {where} leads back to {real}, already listed",
                )
                continue
            seen.add(real)
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in PHOTO_SUFFIXES:
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root)
            label = rel.parts[0] if labels_from_folders and len(rel.parts) > 1 else None
            yield PhotoRef(ref=str(full), source="folder", path=str(full), label=label)


def _read_table(path: Path) -> tuple[pa.Table, list[PhotoRef]]:
    """The manifest as text columns, and a failed reference for each row that cannot be
    read as a row (more or fewer fields than the header): the other rows still count."""
    malformed: list[PhotoRef] = []

    def report(row) -> str:
        where = f"line {row.number}" if row.number else "a line"
        malformed.append(
            PhotoRef(
                ref=f"{path}#line{row.number or len(malformed) + 1}",
                source="manifest",
                problem=(
                    f"bad row: {where} has {row.actual_columns} fields where the header has "
                    f"{row.expected_columns}: {row.text[:80]!r}"
                ),
            )
        )
        return "skip"

    try:
        if path.suffix.lower() == ".parquet":
            return _plain_names(path, pq.read_table(path)), malformed
        # One thread, so each malformed row is reported with its line number.
        opts = pacsv.ReadOptions(encoding="utf-8", use_threads=False)
        parse = pacsv.ParseOptions(delimiter=_delimiter(path), invalid_row_handler=report)
        # Everything as text: values are validated row by row below.
        convert = pacsv.ConvertOptions(column_types={}, strings_can_be_null=True)
        table = pacsv.read_csv(
            path, read_options=opts, parse_options=parse, convert_options=convert
        )
        table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
        return _plain_names(path, table), malformed
    except pa.ArrowInvalid as exc:
        if "utf8" in str(exc).lower():
            raise SourceError(
                f"{path}: cannot read manifest: it is not UTF-8 text",
                "save it as 'CSV UTF-8' (Excel), or convert it: iconv -f cp1252 -t utf-8",
            ) from None
        raise SourceError(f"{path}: cannot read manifest: {exc}") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot read manifest: {exc}") from exc


def _delimiter(path: Path) -> str:
    """Tab for ``.tsv``; otherwise the commonest of comma, semicolon and tab in the header
    (spreadsheets in many locales write CSV with semicolons)."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline(65536)
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _plain_names(path: Path, table: pa.Table) -> pa.Table:
    """Column names as the manifest's columns are documented: ``ID`` and `` Path `` too."""
    names = [str(n).strip().lower() for n in table.column_names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear twice")
    return table.rename_columns(names)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _coordinate(value, name: str, limit: float) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError as exc:
        raise ValueError(f"malformed coordinate: {name}={text!r} is not a number") from exc
    if not math.isfinite(number) or abs(number) > limit:
        raise ValueError(
            f"malformed coordinate: {name}={text!r} is outside [-{limit:g}, {limit:g}]"
        )
    return number


def _time(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # the clock time as written, as for text below
        return value.replace(tzinfo=None)
    text = _text(value)
    if text is None:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%Y:%m:%d %H:%M:%S"):
        try:
            return datetime.strptime(text[:19], fmt)
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError as exc:
        raise ValueError(f"malformed taken_at: {text!r} is not a date") from exc


def iter_manifest(path: Path, duplicates: str = "first") -> Iterator[PhotoRef]:
    """Rows of a CSV, TSV or Parquet manifest as photo references.

    Columns: ``id``, ``path`` or ``url`` (one is required per row), and optionally
    ``label``, ``lat``, ``lon``, ``owner``, ``taken_at``, ``title``, ``tags``.
    Relative paths are resolved against the manifest's folder. Rows without an id are
    keyed by their row number among the file's well-formed rows; a row with more or fewer
    fields than the header is reported as a failed row (by its line), the others read.

    Parameters
    ----------
    duplicates
        When an id repeats: ``first`` keeps the first row, ``last`` the last one (the
        others are reported as failed rows with the row that was kept), ``error`` raises
        :class:`SourceError` before any row is read.
    """
    if duplicates not in DUPLICATE_RULES:
        raise SourceError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}")
    path = path.resolve()
    table, malformed = _read_table(path)
    columns = set(table.column_names)
    if not ({"path", "url"} & columns):
        raise SourceError(f"{path}: a manifest needs a 'path' or a 'url' column")
    kept = _kept_rows(path, table, duplicates)
    yield from malformed
    base = path.parent
    number = 0
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            number += 1
            row_id = _text(row.get("id"))
            ref_key = f"{path}#{row_id}" if row_id else f"{path}#row{number}"
            ref = PhotoRef(ref=ref_key, source="manifest", manifest_id=row_id)
            if row_id and kept.get(row_id, number) != number:
                # Its own key, so the kept row's reference is not replaced by this one.
                ref.ref = f"{path}#row{number}"
                ref.problem = (
                    f"duplicate id: row {number} repeats id {row_id!r}; "
                    f"row {kept[row_id]} was kept (rule: {duplicates})"
                )
                yield ref
                continue
            try:
                file = _text(row.get("path"))
                url = _text(row.get("url"))
                if file:
                    full = Path(file) if Path(file).is_absolute() else base / file
                    ref.path = str(full)
                elif url:
                    ref.url = url
                else:
                    raise ValueError("bad row: neither 'path' nor 'url' is given")
                ref.label = _text(row.get("label"))
                ref.owner = _text(row.get("owner"))
                ref.title = _text(row.get("title"))
                ref.tags = _text(row.get("tags"))
                ref.lat = _coordinate(row.get("lat"), "lat", 90)
                ref.lon = _coordinate(row.get("lon"), "lon", 180)
                if (ref.lat is None) != (ref.lon is None):
                    raise ValueError("malformed coordinate: lat and lon must be given together")
                ref.taken_at = _time(row.get("taken_at"))
            except ValueError as exc:
                ref.problem = str(exc)
            yield ref


def _kept_rows(path: Path, table: pa.Table, duplicates: str) -> dict[str, int]:
    """Row number (1-based) kept for each id that repeats, under the ``duplicates`` rule."""
    if "id" not in table.column_names:
        return {}
    rows: dict[str, list[int]] = {}
    for number, value in enumerate(table.column("id").to_pylist(), start=1):
        text = _text(value)
        if text:
            rows.setdefault(text, []).append(number)
    repeated = {k: v for k, v in rows.items() if len(v) > 1}
    if repeated and duplicates == "error":
        some = ", ".join(
            f"{k!r} (rows {', '.join(map(str, v[:5]))})" for k, v in list(repeated.items())[:3]
        )
        raise SourceError(
            f"{path}: {len(repeated)} id(s) repeat: {some}",
            "make ids unique, or pass --duplicates first or --duplicates last",
        )
    pick = 0 if duplicates == "first" else -1
    return {k: v[pick] for k, v in repeated.items()}


def iter_url_list(path: Path) -> Iterator[PhotoRef]:
    """One URL per line; blank lines and lines starting with ``#`` are ignored."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            url = line.strip()
            if url and not url.startswith("#"):
                problem = None if url.startswith(("http://", "https://")) else "bad row: not a URL"
                yield PhotoRef(ref=url, source="url", url=url, problem=problem)
