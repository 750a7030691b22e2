"""Fetching photos by URL: concurrent, retried, size-limited and cached on disk.

A manifest is data from elsewhere, so a URL in it is not trusted: hosts that resolve to
private, loopback, link-local or otherwise non-public addresses (a router, a cloud
metadata service) are refused unless the user opts in, on every redirect hop too. The
check happens where the connection is made (:class:`CheckedBackend`): the host name is
resolved once and the connection goes to the address that was checked, so a name that
answers a public address first and a private one next (DNS rebinding) is not fetched.
Every request has a total deadline, not only one per read; a body that is not an image is
not kept.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx

from naturelens.errors import PhotoError
from naturelens.sources.images import looks_like_image

MAX_BYTES = 50 * 1024 * 1024
MAX_REDIRECTS = 5


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
    # Whole-request limit (connect, redirects and body): a server that drips a byte at
    # a time never trips a per-read timeout.
    deadline: float = 120.0
    # Fetch from private, loopback and link-local addresses (a server on your network).
    allow_private: bool = False

    def cache_path(self, url: str) -> Path:
        return Path(self.cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def fetch(self, url: str, client: httpx.Client | None = None) -> Path:
        """Download one URL (or find it in the cache) and return the file's path."""
        target = self.cache_path(url)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        own = client is None
        client = client or self._client()
        try:
            return self._fetch(url, target, client)
        finally:
            if own:
                client.close()

    def _client(self) -> httpx.Client:
        # Every connection goes through the address check (redirect hops included), and
        # redirects are followed by hand so each hop also gets the scheme check and the
        # deadline. A transport of our own means connections are direct: proxies named
        # in the environment are not used, since a proxy would resolve the name itself.
        # With private addresses allowed there is nothing to check: proxies are used.
        if self.allow_private:
            return httpx.Client(timeout=self.timeout, follow_redirects=False)
        transport = httpx.HTTPTransport()
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=CheckedBackend(self._allowed),
        )
        return httpx.Client(timeout=self.timeout, follow_redirects=False, transport=transport)

    def _allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether connecting to ``address`` is allowed."""
        return self.allow_private or address.is_global

    def _fetch(self, url: str, target: Path, client: httpx.Client) -> Path:
        last: DownloadError | None = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._attempt(url, target, client, time.monotonic() + self.deadline)
            except _Retry as exc:
                last = exc.error
            except httpx.TimeoutException as exc:
                last = DownloadError("download failed", f"timed out: {exc}")
            except httpx.TransportError as exc:
                last = DownloadError("download failed", f"{type(exc).__name__}: {exc}")
            except httpx.InvalidURL as exc:
                raise DownloadError("download failed", f"invalid URL: {exc}") from exc
        assert last is not None
        raise last

    def _attempt(self, url: str, target: Path, client: httpx.Client, deadline: float) -> Path:
        for _ in range(MAX_REDIRECTS + 1):
            _check_scheme(url)
            with client.stream("GET", url) as response:
                if response.is_redirect and response.headers.get("location"):
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code in (429,) or response.status_code >= 500:
                    raise _Retry(DownloadError("download failed", f"HTTP {response.status_code}"))
                if response.status_code >= 400:
                    raise DownloadError("download failed", f"HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_bytes:
                    raise DownloadError("download too large", f"{declared} bytes")
                return self._save(response, target, deadline)
        raise DownloadError("download failed", f"more than {MAX_REDIRECTS} redirects")

    def _save(self, response: httpx.Response, target: Path, deadline: float) -> Path:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DownloadError("download too large", f"over {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Retry(
                            DownloadError(
                                "download failed", f"not finished within {self.deadline:g} s"
                            )
                        )
                    fh.write(chunk)
            with open(tmp, "rb") as fh:
                head = fh.read(64)
            if not looks_like_image(head):
                # Not kept: an error page or whatever else a server answered.
                raise DownloadError("not an image", f"the server sent {_kind(response)}")
            os.replace(tmp, target)
            return target
        finally:
            tmp.unlink(missing_ok=True)

    def fetch_many(self, urls: Iterable[str]) -> Iterator[tuple[str, Path | DownloadError]]:
        """Fetch URLs concurrently; yields ``(url, path or error)`` in input order."""
        with self._client() as client:

            def one(url: str) -> tuple[str, Path | DownloadError]:
                try:
                    return url, self.fetch(url, client)
                except DownloadError as exc:
                    return url, exc

            with ThreadPoolExecutor(self.workers) as pool:
                yield from pool.map(one, list(urls))


def _check_scheme(url: str) -> None:
    if httpx.URL(url).scheme not in ("http", "https"):
        raise DownloadError("download failed", f"not an http(s) URL: {url}")


class CheckedBackend(httpcore.NetworkBackend):
    """httpcore's network backend that connects only to addresses it has checked.

    The host name is resolved once, here; if any of its addresses is refused the
    connection is refused, otherwise the default backend connects to one of the checked
    addresses, given as a literal so that nothing resolves the name again. TLS still
    verifies the certificate against the host name, which httpcore passes apart.

    Parameters
    ----------
    allowed
        Says whether an address may be connected to.
    """

    def __init__(self, allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]):
        self.allowed = allowed
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not self.allowed(ip):
                raise DownloadError(
                    "private address refused",
                    f"{host} is {ip}, not a public address (pass --allow-private-urls "
                    "to fetch from your own network)",
                )
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("downloads do not use Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _Retry(Exception):
    """A failure worth another attempt."""

    def __init__(self, error: DownloadError):
        super().__init__(str(error))
        self.error = error


def _kind(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    return kind or "a body that is not an image"
