"""Fetching photos by URL: concurrent, retried, size-limited and cached on disk."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from naturelens.errors import PhotoError

MAX_BYTES = 50 * 1024 * 1024


class DownloadError(PhotoError):
    """A URL did not give a photo."""


@dataclass
class Downloader:
    """Downloads URLs into ``cache_dir``, one file per URL named by the URL's hash.

    A URL already in the cache is not fetched again, so an interrupted ingest resumes
    where it stopped. Files are written to a temporary name and renamed, so a killed
    download never leaves a partial file under the final name.
    """

    cache_dir: Path
    timeout: float = 20.0
    retries: int = 3
    max_bytes: int = MAX_BYTES
    workers: int = 8
    backoff: float = 0.5

    def cache_path(self, url: str) -> Path:
        return Path(self.cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def fetch(self, url: str, client: httpx.Client | None = None) -> Path:
        """Download one URL (or find it in the cache) and return the file's path."""
        target = self.cache_path(url)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        own = client is None
        client = client or httpx.Client(timeout=self.timeout, follow_redirects=True)
        try:
            return self._fetch(url, target, client)
        finally:
            if own:
                client.close()

    def _fetch(self, url: str, target: Path, client: httpx.Client) -> Path:
        last: DownloadError | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with client.stream("GET", url) as response:
                    if response.status_code in (429,) or response.status_code >= 500:
                        last = DownloadError("download failed", f"HTTP {response.status_code}")
                        continue
                    if response.status_code >= 400:
                        raise DownloadError("download failed", f"HTTP {response.status_code}")
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > self.max_bytes:
                        raise DownloadError("download too large", f"{declared} bytes")
                    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
                    size = 0
                    with open(tmp, "wb") as fh:
                        for chunk in response.iter_bytes():
                            size += len(chunk)
                            if size > self.max_bytes:
                                fh.close()
                                tmp.unlink(missing_ok=True)
                                raise DownloadError(
                                    "download too large", f"over {self.max_bytes} bytes"
                                )
                            fh.write(chunk)
                    os.replace(tmp, target)
                    return target
            except httpx.TimeoutException as exc:
                last = DownloadError("download failed", f"timed out: {exc}")
            except httpx.TransportError as exc:
                last = DownloadError("download failed", f"{type(exc).__name__}: {exc}")
            except httpx.InvalidURL as exc:
                raise DownloadError("download failed", f"invalid URL: {exc}") from exc
        assert last is not None
        raise last

    def fetch_many(self, urls: Iterable[str]) -> Iterator[tuple[str, Path | DownloadError]]:
        """Fetch URLs concurrently; yields ``(url, path or error)`` in input order."""
        with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:

            def one(url: str) -> tuple[str, Path | DownloadError]:
                try:
                    return url, self.fetch(url, client)
                except DownloadError as exc:
                    return url, exc

            with ThreadPoolExecutor(self.workers) as pool:
                yield from pool.map(one, list(urls))
