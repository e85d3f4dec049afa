"""The HTTP client of the images stage: GET an image's bytes from the open internet, safely and bounded.

- only http/https; every address a host resolves to is checked by mmsa.netpolicy, on every redirect hop (the
  client follows redirects itself), and the socket connects to the address that was checked (no DNS rebinding);
- connect and read timeouts, plus a total deadline per image enforced by a watchdog thread that shuts the
  socket, so slow headers or a drip-fed body cannot hold a thread;
- a byte cap while streaming (and on a declared Content-Length);
- every failure raised as a `Failure` with its status (mmsa.images.status), a server's Retry-After with it.
Retries, host slots and what the bytes are belong to the caller (mmsa.images.worker).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mmsa.images.config import FetchConfig
from mmsa.images.status import Failure, ImageStatus
from mmsa.netpolicy import AddressPolicy, BlockedAddressError, ResolveError

# urllib3 logs a server's malformed headers as a warning with its traceback, mid-run; the image's row tells it
# (its status: a timeout, a connection error).
logging.getLogger("urllib3.connection").setLevel(logging.ERROR)

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_MAX_ADDRESSES_TRIED = 3
_CHUNK = 64 * 1024


class HttpClient:
    """Downloads for one fetch, shared by its threads: the address policy, one watchdog thread, and one
    connection pool manager (urllib3's pools are thread-safe). A context manager: the watchdog runs inside."""

    def __init__(self, config: FetchConfig):
        self.config = config
        self.policy = AddressPolicy(tuple(config.allow_hosts))
        self.watchdog = _Watchdog()
        self._connections = _pool_manager(config)

    def __enter__(self) -> HttpClient:
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.stop()
        self._connections.clear()

    def get(self, url: str, deadline: float, received: list[int]) -> tuple[bytes, int]:
        """The body and HTTP status of `url`, fetched before the monotonic `deadline`; `received[0]` counts the
        body's bytes as they come (for a failure's row). Raises Failure."""
        with self.watchdog.watch(deadline, self.policy) as watch:
            return self._download(url, received, watch)

    def _download(self, url: str, received: list[int], watch: _Watch) -> tuple[bytes, int]:
        """GET `url`, following redirects ourselves so that every hop is checked."""
        config = self.config
        timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        for hop in range(config.max_redirects + 1):
            try:
                response = self._connections.request("GET", url, preload_content=False, redirect=False, retries=False,
                                              timeout=timeout)
                try:
                    code = response.status
                    location = response.headers.get("Location")
                    if code in _REDIRECT_CODES and location:
                        url = urljoin(url, location.strip())
                        check_url(url, redirected=True)
                        continue
                    if not 200 <= code < 300:
                        raise _http_failure(code, response)
                    body = _read_body(response, config.max_bytes, received)
                finally:
                    # A body read to its end has already handed the connection back to the pool, for the next
                    # download from the host; this closes one with unread bytes (a redirect, a failure).
                    response.close()
                    response.release_conn()
                if watch.expired:  # the watchdog cut the headers or body short
                    raise Failure(ImageStatus.TIMEOUT, "deadline per image passed")
                return body, code
            except Failure:
                raise
            except Exception as exc:
                failure = _classify(exc, watch)
                if hop:
                    failure.error = f"after {hop} redirect(s), at {url[:200]}: {failure.error}"
                raise failure from exc
        raise Failure(ImageStatus.TOO_MANY_REDIRECTS, f"more than {config.max_redirects} redirects")


def check_url(url: str, redirected: bool = False) -> str:
    """The URL's host, or a Failure if it is not an http(s) URL we can request."""
    prefix = "redirect to " if redirected else ""
    try:
        parts = urlsplit(url)
        if parts.port == 0:  # urlsplit refuses only ports past 65535; nothing listens on port 0
            raise ValueError("Port 0 is not a port to connect to")
    except ValueError as exc:
        raise Failure(ImageStatus.INVALID_URL, f"{prefix}{url[:200]!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme and scheme not in ("http", "https"):
        raise Failure(ImageStatus.UNSUPPORTED_SCHEME, f"{prefix}{scheme}: URL")
    if not scheme or not parts.hostname or re.search(r"[\s\x00-\x1f\x7f]", url):
        raise Failure(ImageStatus.INVALID_URL, f"{prefix}{url[:200]!r} is not an http(s) URL")
    return parts.hostname


def _http_failure(code: int, response: urllib3.BaseHTTPResponse) -> Failure:
    error = f"HTTP {code} {response.reason or ''}".strip()
    if code == 404:
        return Failure(ImageStatus.HTTP_404, error, code)
    if code == 410:
        return Failure(ImageStatus.HTTP_410, error, code)
    if code == 408:
        return Failure(ImageStatus.TIMEOUT, error, code)
    if code == 429 or 500 <= code < 600:  # past 599 (LinkedIn's 999) no server error: http_error, not retried
        status = ImageStatus.HTTP_429 if code == 429 else ImageStatus.HTTP_5XX
        return Failure(status, error, code, _retry_after(response.headers.get("Retry-After")))
    return Failure(ImageStatus.HTTP_ERROR, error, code)


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdecimal():  # what float() reads; isdigit() is also true of "²"
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _read_body(response: urllib3.BaseHTTPResponse, max_bytes: int, received: list[int]) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdecimal() and int(declared) > max_bytes:
        raise Failure(ImageStatus.TOO_LARGE, f"Content-Length {declared} is over {max_bytes} bytes", response.status)
    body = bytearray()
    try:
        while chunk := response.read(_CHUNK, decode_content=True):
            body += chunk
            received[0] = len(body)
            if len(body) > max_bytes:
                raise Failure(ImageStatus.TOO_LARGE, f"body is over {max_bytes} bytes", response.status)
    except Exception:
        received[0] = max(received[0], response.tell())  # a read that fails keeps the bytes it had buffered
        raise
    return bytes(body)


def _classify(exc: Exception, watch: _Watch) -> Failure:
    """Map an exception from the network stack to a status."""
    if watch.expired:
        return Failure(ImageStatus.TIMEOUT, "deadline per image passed")
    if isinstance(exc, BlockedAddressError):
        return Failure(ImageStatus.BLOCKED_ADDRESS, str(exc))
    if isinstance(exc, ResolveError):
        return Failure(ImageStatus.CONNECTION_ERROR if exc.transient else ImageStatus.DNS_ERROR, str(exc))
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a subclass of urllib3's TimeoutError
        return Failure(ImageStatus.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return Failure(ImageStatus.TIMEOUT, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, urllib3.exceptions.DecodeError):  # a body its Content-Encoding does not undo: no retry will
        return Failure(ImageStatus.DECODE_ERROR, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # urllib3's LocationParseError among them
        return Failure(ImageStatus.INVALID_URL, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return Failure(ImageStatus.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
    raise exc


# --- Connections that check and pin the address, and obey the per-image deadline ---------

_current = threading.local()  # .watch: the _Watch of the download running in this thread


class _Watch:
    """One download's deadline, address policy and sockets."""

    def __init__(self, deadline: float, policy: AddressPolicy):
        self.deadline, self.policy = deadline, policy
        self.expired = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Wake any thread blocked on `sock`: its read returns EOF or fails."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain-socket method, also for TLS sockets
    except OSError:
        pass  # already closed


class _Watchdog:
    """One thread that expires downloads past their deadline, ten times a second."""

    def __init__(self) -> None:
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmsa-fetch-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def watch(self, deadline: float, policy: AddressPolicy) -> Iterator[_Watch]:
        watch = _Watch(deadline, policy)
        with self._lock:
            self._watches.add(watch)
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = None
            with self._lock:
                self._watches.discard(watch)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [watch for watch in self._watches if now > watch.deadline and not watch.expired]
            for watch in late:
                watch.expire()


def _watch() -> _Watch:
    watch = getattr(_current, "watch", None)
    if watch is None:
        raise BlockedAddressError("connection opened outside a fetch: no address policy")
    return watch


class _GuardedConnectionMixin:
    """Resolve, check every address, connect to a checked one; put the socket under the deadline."""

    def _new_conn(self) -> socket.socket:
        addresses = _watch().policy.resolve(self._dns_host, self.port)
        host = self._dns_host
        candidates = addresses[:_MAX_ADDRESSES_TRIED]  # a dual-stack host may refuse on one family
        try:
            for n, address in enumerate(candidates, start=1):
                self._dns_host = address  # pin: connect to an address just checked, not a fresh DNS answer
                try:
                    sock = super()._new_conn()
                    break
                except urllib3.exceptions.NewConnectionError:
                    if n == len(candidates):
                        raise
        finally:
            self._dns_host = host
        return sock

    def getresponse(self):
        # The socket (new, or kept alive from an earlier download) now belongs to this download's
        # deadline, while headers and body are read.
        _watch().add(self.sock)
        return super().getresponse()


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _pool_manager(config: FetchConfig) -> urllib3.PoolManager:
    """One connection pool manager for all download threads (urllib3's pools are thread-safe), opening
    only guarded connections; no retries or redirects of its own (_download does both, checked), and no
    proxy from the environment (one would bypass the address check)."""
    pool = urllib3.PoolManager(
        num_pools=64, maxsize=config.per_host, retries=False, cert_reqs="CERT_REQUIRED",
        ca_certs=config.ca_bundle or certifi.where(),
        headers={"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"},
    )
    pool.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
    return pool
