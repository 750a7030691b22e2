"""The reading half of ingest: turn a photo reference into its bytes' hash and metadata.

The workspace decides what to read and writes the rows; this module only reads files
(local, or downloaded beforehand), hashes them and inspects the photo, recording why a
reference or a photo failed instead of raising.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naturelens.sources.download import DownloadError
from naturelens.sources.images import PhotoDecodeError, inspect_photo
from naturelens.sources.refs import PhotoRef


@dataclass
class ReadResult:
    """What reading one reference found: the photo's id, size and metadata, or why not."""

    ref: PhotoRef
    photo_id: str | None = None
    path: str | None = None
    size: int | None = None
    info: Any = None
    failure: str | None = None  # the reference itself failed (missing file, bad row, dead URL)
    failure_detail: str | None = None
    photo_failure: str | None = None  # the bytes were read but are not a usable photo
    photo_failure_detail: str | None = None


def read_ref(ref: PhotoRef, fetched: dict[str, Path | DownloadError]) -> ReadResult:
    """Read one reference's bytes, hash them and inspect the photo.

    Parameters
    ----------
    ref
        The reference (a local path, or a URL already downloaded into ``fetched``).
    fetched
        Downloads of the batch: URL -> local path, or the download's error.

    Returns
    -------
    ReadResult
        Never raises for bad input: a failure is recorded in the result.
    """
    res = ReadResult(ref)
    if ref.problem:
        res.failure, _, res.failure_detail = ref.problem.partition(": ")
        res.failure_detail = ref.problem
        return res
    if ref.path:
        path = Path(ref.path)
    else:
        got = fetched.get(ref.url or "")
        if isinstance(got, DownloadError):
            res.failure, res.failure_detail = got.reason, got.detail
            return res
        if got is None:
            res.failure, res.failure_detail = "download failed", "no result"
            return res
        path = got
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        res.failure, res.failure_detail = "file not found", str(path)
        return res
    except OSError as exc:
        res.failure, res.failure_detail = "file not readable", f"{path}: {exc}"
        return res
    res.photo_id = hashlib.sha256(data).hexdigest()
    res.path = str(path)
    res.size = len(data)
    try:
        res.info = inspect_photo(data)
    except PhotoDecodeError as exc:
        res.photo_failure, res.photo_failure_detail = exc.reason, exc.detail or str(path)
    return res
