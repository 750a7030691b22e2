"""The reading half of ingest: turn a photo reference into its bytes' hash and metadata.

The workspace decides what to read and writes the rows; this module only reads files
(local, or downloaded beforehand), hashes them and inspects the photo, recording why a
reference or a photo failed instead of raising.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naturelens.sources.download import DownloadError
from naturelens.sources.images import PhotoDecodeError, decoded_bytes, inspect_photo
from naturelens.sources.refs import PhotoRef

# Larger files are refused before they are read: no photo of a collection is this big,
# and a device or a sparse file must not be read whole.
MAX_PHOTO_BYTES = 256 * 1024 * 1024
# Memory that photos being read and decoded at once may take, whatever the thread count.
MEMORY_BUDGET = 2 * 1024**3


class MemoryBudget:
    """Bytes that concurrent readers may hold; a reader waits until its share is free.

    One reader may always go ahead alone, so a photo larger than the whole budget is
    still read (on its own) rather than waiting forever.
    """

    def __init__(self, limit: int = MEMORY_BUDGET):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + amount <= self.limit)
            self.used += amount
            self.peak = max(self.peak, self.used)

    def release(self, amount: int) -> None:
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


class SeenFiles:
    """What reading recent files found, keyed by the file's identity and change stamp.

    A manifest whose rows point to files already read in this ingest (a photo listed
    under several ids) then costs a ``stat``, not a read, hash and decode.
    """

    def __init__(self, size: int = 8192):
        self.size = size
        self._found: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple | None:
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
            return found

    def put(self, key: tuple, found: tuple) -> None:
        with self._lock:
            self._found[key] = found
            while len(self._found) > self.size:
                self._found.popitem(last=False)


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


def read_ref(
    ref: PhotoRef,
    fetched: dict[str, Path | DownloadError],
    budget: MemoryBudget | None = None,
    seen: SeenFiles | None = None,
    max_bytes: int = MAX_PHOTO_BYTES,
) -> ReadResult:
    """Read one reference's bytes, hash them and inspect the photo.

    Only regular files are read (a device, a named pipe or a folder is a failure, never
    a hang or an endless read), and none larger than ``max_bytes``.

    Parameters
    ----------
    ref
        The reference (a local path, or a URL already downloaded into ``fetched``).
    fetched
        Downloads of the batch: URL -> local path, or the download's error.
    budget
        Shared memory budget of the readers running at once.
    seen
        Files already read in this ingest, to skip reading them again.
    max_bytes
        Largest file read.

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
        # O_NONBLOCK: opening a named pipe must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        res.failure, res.failure_detail = "file not found", str(path)
        return res
    except OSError as exc:
        res.failure, res.failure_detail = "file not readable", f"{path}: {exc}"
        return res
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            res.failure, res.failure_detail = "not a regular file", str(path)
            return res
        if info.st_size > max_bytes:
            res.failure = "file too large"
            res.failure_detail = f"{path}: {info.st_size} bytes, the limit is {max_bytes}"
            return res
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        found = seen.get(key) if seen is not None else None
        if found is not None:
            res.path = str(path)
            res.photo_id, res.size, res.info, res.photo_failure, res.photo_failure_detail = found
            return res
        # One share for the whole read: the bytes and the decoded pixels (the size comes
        # from the header, so a huge image waits for room before it is read at all).
        cost = info.st_size + decoded_bytes(os.pread(fh.fileno(), 1 << 20, 0))
        if budget is not None:
            budget.acquire(cost)
        try:
            data = _read_exactly(fh, max_bytes)
            res.photo_id = hashlib.sha256(data).hexdigest()
            res.path = str(path)
            res.size = len(data)
            try:
                res.info = inspect_photo(data)
            except PhotoDecodeError as exc:
                res.photo_failure, res.photo_failure_detail = exc.reason, exc.detail or str(path)
            del data
        except OSError as exc:
            res.failure, res.failure_detail = "file not readable", f"{path}: {exc}"
            return res
        finally:
            if budget is not None:
                budget.release(cost)
    if seen is not None:
        seen.put(
            key, (res.photo_id, res.size, res.info, res.photo_failure, res.photo_failure_detail)
        )
    return res


def _read_exactly(fh, max_bytes: int) -> bytes:
    """The file's bytes; a file that grew past ``max_bytes`` while being read is refused."""
    data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"grew beyond {max_bytes} bytes while being read")
    return data
