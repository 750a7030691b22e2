"""The reading half of ingest: turn photo references into their bytes' hash and metadata.

The workspace decides what to read and writes the rows; this module only reads files
(local, or downloaded beforehand), hashes them and inspects the photo, recording why a
reference or a photo failed instead of raising. Each file is independent, so worker
processes read them on every core and send back only a small record (no pixels, no
bytes); the catalog is written by the one process that owns the workspace.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naturelens.sources.download import DownloadError
from naturelens.sources.images import PhotoDecodeError, PhotoInfo, inspect_photo
from naturelens.sources.refs import PhotoRef

# Below this many files per worker, starting processes costs more than it saves.
MIN_FILES_PER_WORKER = 4


@dataclass
class PhotoFile:
    """What reading one photo file found.

    ``failure`` is set when the file could not be read at all; ``photo_failure`` when its
    bytes were read (and hashed) but are not a usable photo.
    """

    path: str
    photo_id: str | None = None
    size: int | None = None
    info: PhotoInfo | None = None
    failure: str | None = None
    failure_detail: str | None = None
    photo_failure: str | None = None
    photo_failure_detail: str | None = None


def read_photo_file(path: str) -> PhotoFile:
    """Read, hash and inspect one photo file; problems are recorded, never raised."""
    found = PhotoFile(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        found.failure, found.failure_detail = "file not found", path
        return found
    except OSError as exc:
        found.failure, found.failure_detail = "file not readable", f"{path}: {exc}"
        return found
    found.photo_id = hashlib.sha256(data).hexdigest()
    found.size = len(data)
    try:
        found.info = inspect_photo(data)
    except PhotoDecodeError as exc:
        found.photo_failure, found.photo_failure_detail = exc.reason, exc.detail or path
    return found


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class PhotoReader:
    """Reads photo files in worker processes (or in this one, for few files or one core).

    Use as a context manager; the workers start on the first large enough batch and
    serve every batch after it.

    Parameters
    ----------
    workers
        Worker processes (default: every core).
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())
        self._pool: Executor | None = None

    def read(self, paths: Sequence[str]) -> list[PhotoFile]:
        """One :class:`PhotoFile` per path, in the order given."""
        if self.workers == 1 or len(paths) < MIN_FILES_PER_WORKER * self.workers:
            return [read_photo_file(p) for p in paths]
        if self._pool is None:
            # forkserver: workers start from a clean process, not a copy of this one and
            # its database threads.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
        chunk = max(1, len(paths) // (4 * self.workers))
        return list(self._pool.map(read_photo_file, paths, chunksize=chunk))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PhotoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    def add(self, found: PhotoFile) -> None:
        """Take in what reading the reference's file found."""
        self.photo_id, self.size, self.info = found.photo_id, found.size, found.info
        self.failure, self.failure_detail = found.failure, found.failure_detail
        self.photo_failure = found.photo_failure
        self.photo_failure_detail = found.photo_failure_detail


def ref_result(ref: PhotoRef, fetched: dict[str, Path | DownloadError]) -> ReadResult:
    """The reference's own failure, or the file to read for it (read by a :class:`PhotoReader`).

    Parameters
    ----------
    ref
        The reference (a local path, or a URL already downloaded into ``fetched``).
    fetched
        Downloads of the batch: URL -> local path, or the download's error.
    """
    res = ReadResult(ref)
    if ref.problem:
        res.failure, _, res.failure_detail = ref.problem.partition(": ")
        res.failure_detail = ref.problem
        return res
    if ref.path:
        res.path = str(Path(ref.path))
        return res
    got = fetched.get(ref.url or "")
    if isinstance(got, DownloadError):
        res.failure, res.failure_detail = got.reason, got.detail
    elif got is None:
        res.failure, res.failure_detail = "download failed", "no result"
    else:
        res.path = str(got)
    return res


def read_ref(ref: PhotoRef, fetched: dict[str, Path | DownloadError]) -> ReadResult:
    """Read one reference in this process: :func:`ref_result`, then its file.

    Returns
    -------
    ReadResult
        Never raises for bad input: a failure is recorded in the result.
    """
    res = ref_result(ref, fetched)
    if res.path and not res.failure:
        res.add(read_photo_file(res.path))
    return res
