"""Files on local disk or object storage, read and written through pyarrow file systems.

A location is a local path or a URI that pyarrow understands (``s3://bucket/key``,
``gs://bucket/key``). S3-compatible servers (MinIO, Ceph, a test server) are reached
with the usual AWS settings: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from urllib.parse import urlsplit

import pyarrow.fs as pafs

_lock = threading.Lock()


def is_uri(location: str) -> bool:
    """Whether ``location`` names object storage rather than a local path."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1  # "C:" is a drive letter, not a scheme


@lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
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


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The file system holding ``location`` and the path inside it."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    parts = urlsplit(str(location))
    with _lock:  # one client per bucket and process, made once
        fs = _filesystem(parts.scheme, parts.netloc)
    return fs, f"{parts.netloc}{parts.path}"


def read_bytes(location: str) -> bytes:
    """The contents of a local file or an object.

    Raises
    ------
    OSError
        When it cannot be read (missing, no permission, server unreachable).
    """
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` to a local file or an object (parent folders are made)."""
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)
