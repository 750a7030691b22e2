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
import signal
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naturelens.sources.budget import DecodeBudget, default_budget, parse_size
from naturelens.sources.download import DownloadError
from naturelens.sources.images import UNREADABLE, PhotoDecodeError, PhotoInfo, inspect_photo
from naturelens.sources.refs import PhotoRef

# Larger files are refused before they are read: no photo of a collection is this big,
# and a device or a sparse file must not be read whole.
MAX_PHOTO_BYTES = 256 * 1024 * 1024

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


# The decode budget of this worker process, shared with the others (set when it starts).
_WORKER_BUDGET: DecodeBudget | None = None


def _start_worker(budget: DecodeBudget) -> None:
    """Set up a worker process: the shared budget, and exit when the ingest dies."""
    global _WORKER_BUDGET
    _WORKER_BUDGET = budget
    # Ctrl-C reaches the whole process group: the ingest stops the pool, and a worker
    # interrupted on its own would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A killed ingest (SIGKILL, out of memory) cannot stop its pool, and an idle worker
    # waits on its task queue for ever: watch the parent's sentinel instead.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent) -> None:
    parent.join()
    os._exit(1)


def read_photo_file(
    path: str, max_bytes: int = MAX_PHOTO_BYTES, budget: DecodeBudget | None = None
) -> PhotoFile:
    """Read, hash and inspect one photo file; problems are recorded, never raised.

    Only regular files are read (a device, a named pipe or a folder is a failure, never a
    hang or an endless read), and none larger than ``max_bytes``. The decode reserves its
    memory from ``budget`` (default: the budget a :class:`PhotoReader` gave this worker
    process; none outside one).
    """
    found = PhotoFile(path)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        found.failure, found.failure_detail = "file not found", path
        return found
    except OSError as exc:
        found.failure, found.failure_detail = UNREADABLE, f"{path}: {exc}"
        return found
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            found.failure, found.failure_detail = "not a regular file", path
            return found
        if info.st_size > max_bytes:
            found.failure = "file too large"
            found.failure_detail = f"{path}: {info.st_size} bytes, the limit is {max_bytes}"
            return found
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            found.failure, found.failure_detail = UNREADABLE, f"{path}: {exc}"
            return found
    if len(data) > max_bytes:
        found.failure, found.failure_detail = "file too large", f"{path}: grew while read"
        return found
    found.photo_id = hashlib.sha256(data).hexdigest()
    found.size = len(data)
    try:
        found.info = inspect_photo(data, budget if budget is not None else _WORKER_BUDGET)
    except PhotoDecodeError as exc:
        found.photo_failure, found.photo_failure_detail = exc.reason, exc.detail or path
    return found


class SeenFiles:
    """What reading recent files found, keyed by the file's identity and change stamp.

    A manifest whose rows point to files already read in this ingest (a photo listed
    under several ids) then costs a ``stat``, not a read, hash and decode.
    """

    def __init__(self, size: int = 8192):
        self.size = size
        self._found: OrderedDict[tuple, PhotoFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> PhotoFile | None:
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
            return found

    def put(self, key: tuple, found: PhotoFile) -> None:
        with self._lock:
            self._found[key] = found
            while len(self._found) > self.size:
                self._found.popitem(last=False)


def _identity(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def read_files(reader: PhotoReader, paths: Sequence[str], seen: SeenFiles) -> list[PhotoFile]:
    """Read ``paths`` with ``reader``, each distinct unchanged file once per ingest."""
    keys = [_identity(p) for p in paths]
    out: list[PhotoFile | None] = []
    wanted: dict[tuple, str] = {}
    for path, key in zip(paths, keys, strict=True):
        hit = seen.get(key) if key is not None else None
        out.append(None if hit is None else _at(hit, path))
        if hit is None and key is not None:
            wanted.setdefault(key, path)
    fresh = dict(zip(wanted, reader.read(list(wanted.values())), strict=True))
    for key, found in fresh.items():
        if not found.failure:
            seen.put(key, found)
    rest = [p for p, got, key in zip(paths, out, keys, strict=True) if got is None and key is None]
    unkeyed = iter(reader.read(rest)) if rest else iter(())
    result = []
    for path, got, key in zip(paths, out, keys, strict=True):
        if got is None:
            got = _at(fresh[key], path) if key is not None else next(unkeyed)
        result.append(got)
    return result


def _at(found: PhotoFile, path: str) -> PhotoFile:
    return PhotoFile(
        path,
        found.photo_id,
        found.size,
        found.info,
        found.failure,
        found.failure_detail,
        found.photo_failure,
        found.photo_failure_detail,
    )


def default_workers() -> int:
    """Every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class PhotoReader:
    """Reads photo files in worker processes (or in this one, for few files or one core).

    Use as a context manager; the workers start on the first large enough batch and
    serve every batch after it. The photos they decode at once share one memory budget,
    so memory is bounded by the budget, not by the number of workers.

    Parameters
    ----------
    workers
        Worker processes (default: every core).
    memory_budget
        Bytes (or a size such as ``"2GB"``) that the workers' decodes may hold at once;
        a photo larger than the budget is decoded alone. Default: a quarter of the
        memory available when the workers start, at least 1 GiB.
    """

    def __init__(self, workers: int | None = None, memory_budget: int | str | None = None):
        self.workers = max(1, workers or default_workers())
        self.memory_budget = parse_size(memory_budget) if memory_budget is not None else None
        # The budget shared by the workers, made with them (it reports its peak).
        self.budget: DecodeBudget | None = None
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
            # Made from the pool's context and handed over as each worker starts: the
            # only way shared locks reach processes that are not forked from this one.
            self.budget = DecodeBudget(self.memory_budget or default_budget(), context)
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self.budget,),
            )
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
