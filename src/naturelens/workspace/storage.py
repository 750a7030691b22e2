"""Where a workspace's files live: on local disk, or on object storage.

A location is a local path or a URI that pyarrow's file systems understand
(``s3://bucket/prefix``, ``gs://bucket/prefix``). S3-compatible servers (MinIO, Ceph, a
test server) are reached with the usual AWS settings: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``.

A workspace can keep two things on object storage, so that the workers of a cluster reach
them from any node (see ``workspace.yaml``'s ``storage`` section):

- ``photos``: a copy of every photo, named by its id (the SHA-256 of its bytes);
- ``embeddings``: the embedding store (one folder of Parquet parts per model).

:class:`ObjectFolder` gives a folder on object storage the few pathlib methods the stores
use, so a store is written the same way whichever side it lives on.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from naturelens.errors import NaturelensError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_lock = threading.Lock()


class StorageError(NaturelensError):
    """Object storage cannot be reached or a location cannot be used."""


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names object storage rather than a local path."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1  # "C:" is a drive letter, not a scheme


@lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        options = {}
        if endpoint:
            parts = urlsplit(endpoint)
            options = {"endpoint_override": parts.netloc or endpoint, "scheme": parts.scheme}
        return pafs.S3FileSystem(region=region or "us-east-1", **options)
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return fs


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The file system holding ``location`` and the path inside it."""
    import pyarrow.fs as pafs  # loaded on use: a local workspace's `status` needs none

    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    parts = urlsplit(str(location))
    try:
        with _lock:  # one client per bucket and process, made once
            fs = _filesystem(parts.scheme, parts.netloc)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot use {location}: {exc}") from None
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def read_bytes(location: str | Path) -> bytes:
    """The contents of a local file or an object.

    Raises
    ------
    OSError
        When it cannot be read (missing, no permission, server unreachable).
    """
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


class ObjectFolder:
    """A folder on object storage, with the pathlib methods the stores use.

    Parameters
    ----------
    location
        ``s3://bucket/prefix`` (or any URI pyarrow opens).
    """

    def __init__(self, location: str):
        self.location = str(location).rstrip("/")
        self.fs, self.path = filesystem(self.location)

    def __truediv__(self, name: str) -> ObjectFolder:
        return ObjectFolder(f"{self.location}/{name}")

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"ObjectFolder({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectFolder) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def __lt__(self, other: ObjectFolder) -> bool:
        return self.location < other.location

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    def with_suffix(self, suffix: str) -> ObjectFolder:
        stem = self.name.rsplit(".", 1)[0] if "." in self.name[1:] else self.name
        return ObjectFolder(f"{self.location.rsplit('/', 1)[0]}/{stem}{suffix}")

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.Directory

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.create_dir(self.path, recursive=parents)

    def glob(self, pattern: str) -> list[ObjectFolder]:
        """Objects directly in this folder whose name matches ``pattern``."""
        import pyarrow.fs as pafs

        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [
            self / info.base_name
            for info in found
            if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, pattern)
        ]

    def iterdir(self) -> list[ObjectFolder]:
        import pyarrow.fs as pafs

        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [self / info.base_name for info in found]

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def replace(self, target: ObjectFolder) -> ObjectFolder:
        """Move to ``target`` (an object appears whole: readers never see half of it)."""
        self.fs.move(self.path, target.path)
        return target

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise


def folder(location: str | Path) -> Path | ObjectFolder:
    """A local folder as a Path, a folder on object storage as an :class:`ObjectFolder`."""
    return ObjectFolder(str(location)) if is_uri(location) else Path(location)


def arrow_path(target: Path | ObjectFolder) -> tuple[str, pafs.FileSystem | None]:
    """``(path, filesystem)`` for pyarrow's readers and writers (filesystem None: local)."""
    if isinstance(target, ObjectFolder):
        return target.path, target.fs
    return str(target), None


def photo_location(photos_at: str, photo_id: str) -> str:
    """Where the copy of a photo lives in a workspace's photo store."""
    return f"{photos_at.rstrip('/')}/{photo_id}"


def copy_photos(ws, location: str, progress=None, threads: int = 8) -> int:
    """Copy the workspace's photos to ``location`` (each named by its id), skipping those
    already there; returns how many were copied. A photo whose file cannot be read now is
    not copied (reading it from ``location`` then fails, and is recorded, like the file).

    Parameters
    ----------
    ws
        The workspace (its catalog says where each photo's file is).
    location
        A folder or bucket prefix (``s3://bucket/photos``).
    progress
        Called with the number of photos handled after each one.
    """
    from concurrent.futures import ThreadPoolExecutor

    target = folder(location)
    target.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in target.iterdir()}
    ids = [pid for pid in ws.photo_ids() if pid not in present]
    paths = ws.photo_paths(ids)

    def copy(pid: str) -> bool:
        try:
            data = Path(paths[pid]).read_bytes()
        except (KeyError, OSError):
            return False
        (target / pid).write_bytes(data)
        return True

    copied = 0
    with ThreadPoolExecutor(threads) as pool:
        for done in pool.map(copy, ids):
            copied += done
            if progress:
                progress(1)
    return copied
