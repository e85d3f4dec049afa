"""Fetch post images from the open internet into a content-addressed cache of their bytes.

`fetch_images` takes (post_id, image_url) pairs and returns one FetchResult per pair, in
order, whatever the URL, server or bytes do: every failure becomes one status of the closed
set ImageStatus (docs/image_status.md). Images that decode are stored as downloaded in an
ImageCache under the SHA-256 of their bytes; with keep_images, each result also carries the
image preprocessed to uint8 RGB image_size x image_size, for the model.

How it stays safe and bounded on untrusted input:
- only http/https (local files only with allow_local_files); every address a host resolves
  to is checked by mmsa.netpolicy, on every redirect hop, and the socket connects to the
  address that was checked (no DNS rebinding);
- connect and read timeouts, plus a total deadline per image enforced by a watchdog that
  shuts the socket, so slow headers or a drip-fed body cannot hold a worker;
- a byte cap while streaming, a pixel cap before decoding, formats sniffed from magic bytes;
- bounded concurrency (workers), a per-host cap, and a bounded number of images in flight;
- retries with exponential back-off and jitter for the RETRYABLE statuses, honouring a
  capped Retry-After; none for other 4xx.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
import random
import re
import socket
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mmsa import files, imaging, storage
from mmsa.netpolicy import AddressPolicy, BlockedAddressError, ResolveError


class ImageStatus(str, enum.Enum):
    """What happened to a post's image. Closed set: every FetchResult.status is one of these."""

    OK = "ok"  # downloaded (or read), decoded and stored in the cache; image_key is set
    NO_IMAGE = "no_image"  # the post has no image_url (null or blank)
    INVALID_URL = "invalid_url"  # not a parseable http(s) URL (no host, bad port, spaces, ...)
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # a scheme other than http/https (ftp:, data:, ...)
    LOCAL_FILE_REFUSED = "local_file_refused"  # a local path or file: URL without allow_local_files
    FILE_ERROR = "file_error"  # allowed local file missing or unreadable
    BLOCKED_ADDRESS = "blocked_address"  # host is/resolves to a non-public address, maybe via a redirect
    DNS_ERROR = "dns_error"  # the host name does not resolve
    CONNECTION_ERROR = "connection_error"  # refused, reset, TLS failure, body cut short
    TIMEOUT = "timeout"  # connect/read timeout, the per-image deadline, or HTTP 408
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more than max_redirects hops, or a loop
    HTTP_404 = "http_404"  # Not Found
    HTTP_410 = "http_410"  # Gone
    HTTP_429 = "http_429"  # Too Many Requests (still, after the retries)
    HTTP_5XX = "http_5xx"  # a server error (still, after the retries)
    HTTP_ERROR = "http_error"  # any other non-success HTTP status (401, 403, 3xx without Location, ...)
    TOO_LARGE = "too_large"  # body over max_bytes, or image over max_pixels (decompression bomb)
    NOT_AN_IMAGE = "not_an_image"  # empty body or bytes of no accepted format (HTML, SVG, ...)
    DECODE_ERROR = "decode_error"  # looks like an image but does not decode (truncated, corrupt)


# Statuses worth trying again: retried within a run, and again with retry_failed=True.
RETRYABLE: frozenset[str] = frozenset(
    s.value for s in (ImageStatus.CONNECTION_ERROR, ImageStatus.TIMEOUT, ImageStatus.HTTP_429, ImageStatus.HTTP_5XX)
)

# Statuses decided by the URL text and the config alone: never stored in the URL index, so that
# a later run with other settings (allow_hosts, allow_local_files) decides them afresh.
_CONFIG_DEPENDENT = frozenset(
    s.value
    for s in (
        ImageStatus.INVALID_URL,
        ImageStatus.UNSUPPORTED_SCHEME,
        ImageStatus.LOCAL_FILE_REFUSED,
        ImageStatus.FILE_ERROR,
        ImageStatus.BLOCKED_ADDRESS,
    )
)

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_MAX_ADDRESSES_TRIED = 3
_CHUNK = 64 * 1024

# Decoding, resizing and storing are CPU work: more threads at it than this process has cores only add
# GIL hand-offs and context switches. Shared by every fetch in the process; downloads keep `workers`.
_DECODE_SLOTS = threading.BoundedSemaphore(len(os.sched_getaffinity(0)))


@dataclass
class FetchConfig:
    """How to fetch. Defaults suit the open internet; tests shrink the timeouts."""

    image_size: int = 224  # preprocessed images: uint8 RGB image_size x image_size (squashed, whole picture kept)
    allow_hosts: tuple[str, ...] = ()  # host names or IPs/CIDRs exempt from the address block
    allow_local_files: bool = False  # accept absolute paths and file: URLs
    connect_timeout: float = 5.0  # seconds to establish a TCP connection
    read_timeout: float = 10.0  # seconds of silence tolerated while waiting for bytes
    deadline: float = 30.0  # total seconds per image (from its first request): attempts, redirects, back-off
    max_bytes: int = 20 * 2**20  # body size cap
    max_pixels: int = imaging.MAX_PIXELS  # width x height cap, checked before decoding
    max_redirects: int = 5
    retries: int = 2  # extra attempts for RETRYABLE statuses
    backoff: float = 0.5  # first back-off wait in seconds, doubled per retry, with +-50% jitter
    max_retry_after: float = 10.0  # cap on a server's Retry-After
    workers: int = 16  # concurrent downloads (threads); at most one per core decodes at a time
    per_host: int = 8  # concurrent downloads from one host
    user_agent: str = "mmsa-fetch/0.1 (+image sentiment research)"
    ca_bundle: str | None = None  # CA certificates file for HTTPS (a private CDN's CA); default: certifi
    # Worker processes for download + decode + resize, read by mmsa.procfetch (its fetch_images and fetch_dump):
    # 0 = threads of this process; None = one per core on machines of more than 2 cores, else 0. With N > 0,
    # `workers` threads download in each process and `per_host` holds across them.
    processes: int | None = 0
    # Decode JPEGs on the GPU in batches (mmsa.gpudecode) where one is present; other formats, capped and odd
    # images stay on the CPU path. No effect without a GPU.
    gpu_decode: bool = False


@dataclass
class FetchResult:
    """One row of the status table: what happened to one post's image (and the image, when kept)."""

    post_id: str
    url: str | None
    status: str
    http_code: int | None = None  # last HTTP status seen, if any
    bytes: int = 0  # body bytes received (of the last attempt)
    attempts: int = 0  # requests made for this URL (0: decided without network)
    error: str | None = None  # human-readable reason for a failure
    elapsed_s: float = 0.0
    image_key: str | None = None  # key into the ImageCache when status == "ok"
    cache_repaired: bool = False  # a damaged cache entry was met, removed and the image fetched anew. Not in the row.
    # With keep_images and status "ok": the preprocessed image. Not part of the row.
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict:
        """The fields of the status table and of the URL index: all but the image."""
        return {name: getattr(self, name) for name in STATUS_TABLE_SCHEMA.names}


class CacheDamaged(Exception):
    """A cache entry that no longer holds what its name says (a truncated or corrupted file, an index entry
    that does not parse or names no stored image); the cache has removed it, the caller fetches anew."""


class ImageCache:
    """Downloaded images on disk, as received, keyed by the SHA-256 of their bytes, plus a URL index.

    Layout under root/src-v1/: img/ab/<key> and url/ab/<sha256(url)>.json. The source bytes, not
    preprocessed arrays: a model of any image size, and any later preprocessing, reuses them without
    downloading again, and they take a third to a twelfth of the disk and of the writes. Writes are
    atomic (mmsa.files), so concurrent processes never see half a file. The root may be an fsspec URL
    (s3://bucket/cache, mmsa.storage): there each write is one upload, which appears whole.

    Reads check themselves, since a disk, a copy or a hand can still damage a file after it was written: bytes
    must hash to their key, an index entry must parse and an "ok" must name a stored image. A damaged entry is
    removed and CacheDamaged raised, so that the image is fetched anew rather than scored wrong
    (benchmarks/results/fetch.md: the check's cost against decoding).
    """

    def __init__(self, root: str | Path):
        self.root = storage.path(root) / "src-v1"

    def load(self, key: str) -> bytes:
        """The image bytes stored under `key`; CacheDamaged if they no longer hash to it."""
        path = self._image_path(key)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != key:
            self._remove(path)
            raise CacheDamaged(f"{path}: the bytes do not hash to their name")
        return data

    def has(self, key: str) -> bool:
        path = self._image_path(key)
        return path.is_file() if isinstance(path, Path) else path.exists()

    def store(self, key: str, data: bytes) -> None:
        storage.write_bytes(self._image_path(key), data)

    def lookup(self, url: str) -> FetchResult | None:
        """The result last recorded for `url` (post_id empty), or None; CacheDamaged if its entry does not parse
        or is an "ok" whose image is not stored."""
        path = self._url_path(url)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            known = FetchResult(**json.loads(text))
            if known.status == ImageStatus.OK and not self.has(known.image_key):
                raise ValueError(f"no stored image {known.image_key}")
        except (ValueError, TypeError) as exc:  # a cut or altered file: bad JSON, fields or key
            self._remove(path)
            raise CacheDamaged(f"{path}: {exc}") from exc
        return known

    def record(self, url: str, result: FetchResult) -> None:
        storage.write_bytes(self._url_path(url), json.dumps({**result.row(), "post_id": ""}).encode())

    @staticmethod
    def _remove(path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:  # another reader removed it first
            pass

    def _image_path(self, key: str) -> Path:
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"not an image key: {key!r}")
        return self.root / "img" / key[:2] / key

    def _url_path(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / "url" / digest[:2] / f"{digest}.json"


def fetch_images(
    items: Iterable[tuple[str, str | None]],
    config: FetchConfig,
    cache: ImageCache,
    progress: bool = False,
    retry_failed: bool = False,
    keep_images: bool = False,
    on_result: Callable[[int, FetchResult], None] | None = None,
    submitter: Callable | None = None,
) -> list[FetchResult]:
    """Fetch the image of every (post_id, image_url); one FetchResult per item, in input order.

    Each distinct URL is fetched once, in the order the items first name it. A URL found in the
    cache's URL index is not fetched again; with retry_failed=True, those whose recorded status is
    RETRYABLE are. Never raises for a bad URL, server or image. With keep_images, every "ok" result
    carries its image preprocessed (cached bytes are decoded again): memory grows with the items, so
    pass a shard. on_result(index, result) is called, in this thread, as each item's result is known.
    submitter(config, cache, keep_images, retry_failed): a context manager giving (submit(url) -> Future of its
    FetchResult, how many URLs may be in flight); default: threads of this process (mmsa.procfetch passes its
    worker processes' here).
    """
    items = list(items)
    results: list[FetchResult | None] = [None] * len(items)
    posts_by_url: dict[str, list[int]] = {}
    for index, (post_id, url) in enumerate(items):
        url = url.strip() if isinstance(url, str) else ""
        if url:
            posts_by_url.setdefault(url, []).append(index)
        else:
            results[index] = FetchResult(post_id=post_id, url=None, status=ImageStatus.NO_IMAGE.value)
            if on_result is not None:
                on_result(index, results[index])

    if not posts_by_url:  # nothing to download: no threads or worker processes started
        return results  # type: ignore[return-value]
    ok = done = 0
    with (
        (submitter or _threads)(config, cache, keep_images, retry_failed) as (submit, capacity),
        _progress_bar(len(items), progress) as bar,
    ):
        bar.update(len(items) - sum(map(len, posts_by_url.values())))
        pending: dict = {}
        urls = iter(posts_by_url)
        while True:
            # Keep at most `capacity` (2 x workers per process) URLs submitted: bounded memory for any dump size.
            for url in urls:
                pending[submit(url)] = url
                if len(pending) >= capacity:
                    break
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                url = pending.pop(future)
                outcome = future.result()
                for index in posts_by_url[url]:
                    results[index] = replace(outcome, post_id=items[index][0])
                    if on_result is not None:
                        on_result(index, results[index])
                done += len(posts_by_url[url])
                ok += len(posts_by_url[url]) if outcome.status == ImageStatus.OK else 0
                bar.update(len(posts_by_url[url]))
                bar.set_postfix_str(f"ok {100 * ok / done:.0f}%", refresh=False)
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _threads(config: FetchConfig, cache: ImageCache, keep_images: bool, retry_failed: bool):
    """fetch_images' default submitter: `workers` threads of this process."""
    with (
        _Fetcher(config, cache, keep_images) as fetcher,
        ThreadPoolExecutor(config.workers, thread_name_prefix="mmsa-fetch") as pool,
    ):
        yield (lambda url: pool.submit(fetcher.fetch, url, retry_failed)), 2 * config.workers


# The status table written by `mmsa fetch`: one row per image of a post (one no_image row for a post without).
STATUS_TABLE_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("http_code", pa.int32()),
        ("bytes", pa.int64()),
        ("attempts", pa.int32()),
        ("error", pa.string()),
        ("elapsed_s", pa.float64()),
        ("image_key", pa.string()),
    ]
)


@dataclass
class FetchSummary:
    """What `fetch_dump` did, for printing."""

    status_path: Path
    counts: dict[str, int]  # posts per status
    rejected_rows: int  # dump rows that are not valid posts (see mmsa.source), not in the table
    seconds: float
    cache_repaired: int = 0  # damaged cache entries met, removed and fetched anew (ImageCache)

    def describe(self) -> str:
        posts = sum(self.counts.values())
        with_url = posts - self.counts.get(ImageStatus.NO_IMAGE.value, 0)
        rate = with_url / self.seconds if self.seconds else 0.0
        ok = self.counts.get(ImageStatus.OK.value, 0)
        share = f"{100 * ok / with_url:.1f}%" if with_url else "-"
        by_status = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        return (
            f"{posts} posts, {with_url} with an image_url, in {self.seconds:.1f} s ({rate:.0f} images/s); "
            f"ok {share}\n  {by_status}\n  {self.rejected_rows} dump rows rejected as invalid posts\n"
            f"  status table: {self.status_path}" + (f"\n  cache entries repaired: {self.cache_repaired}"
                                                      if self.cache_repaired else "")
        )


def fetch_dump(
    dump: str | Path,
    cache_dir: str | Path,
    config: FetchConfig,
    status_path: str | Path | None = None,
    retry_failed: bool = False,
    progress: bool = False,
    batch_size: int = 50_000,
    options=None,
    submitter: Callable | None = None,
) -> FetchSummary:
    """Fetch the images of every post in `dump` into the cache and write the status table.

    The table (Parquet, STATUS_TABLE_SCHEMA) goes to `status_path`, by default
    CACHE/status/<dump name>.parquet, replaced atomically. Posts are fetched in batches of
    `batch_size`, so memory stays flat for any dump; the URL index makes a re-run resume. `options`: how
    records become posts (mmsa.source.ReadOptions; default: each record's shape tells its format). The dump, the
    cache and the table may be fsspec URLs (mmsa.storage). `submitter`: as for fetch_images.
    """
    from mmsa import source

    started = time.monotonic()
    cache_dir = storage.path(cache_dir)  # local, or a bucket: then the downloaded dump and the table stay local first
    local_dir = cache_dir if isinstance(cache_dir, Path) else Path(tempfile.gettempdir()) / "mmsa-fetch"
    paths = source.resolve(dump, local_dir / "dumps")
    if status_path is None:
        stem = re.sub(r"[^\w.-]", "_", Path(urlsplit(str(dump)).path).stem)  # a glob's * and ? are no file names
        status_path = cache_dir / "status" / f"{stem}.parquet"
    status_path = storage.path(status_path)
    local_status = status_path if isinstance(status_path, Path) else local_dir / "status" / status_path.name
    cache = ImageCache(cache_dir)
    counts: dict[str, int] = {}
    rejected = repaired = 0
    batch: list[tuple[str, str | None]] = []

    def flush() -> None:
        results = fetch_images(batch, config, cache, progress=progress, retry_failed=retry_failed, submitter=submitter)
        nonlocal repaired
        for result in results:
            counts[result.status] = counts.get(result.status, 0) + 1
        repaired += len({r.url for r in results if r.cache_repaired})
        writer.write_table(pa.Table.from_pylist([r.row() for r in results], schema=STATUS_TABLE_SCHEMA))
        batch.clear()

    with files.atomic_path(local_status) as tmp, pq.ParquetWriter(tmp, STATUS_TABLE_SCHEMA) as writer:
        for shard in source.iter_shards(paths, min(batch_size, 10_000), dump_name=str(dump), options=options):
            rejected += len(shard.rejected)
            batch.extend((post_id, url) for post_id, urls in zip(shard.posts["post_id"].to_pylist(),
                                                                 shard.posts["image_urls"].to_pylist())
                         for url in urls or [None])
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    if local_status is not status_path:
        storage.upload(local_status, status_path)
    return FetchSummary(status_path, counts, rejected, time.monotonic() - started, repaired)


@contextmanager
def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    with tqdm(total=total, unit="img", disable=not enabled, smoothing=0.1) as bar:
        yield bar


class _Failure(Exception):
    """Ends one attempt with a status."""

    def __init__(self, status: ImageStatus, error: str, http_code: int | None = None, retry_after: float | None = None):
        super().__init__(error)
        self.status, self.error, self.http_code, self.retry_after = status, error, http_code, retry_after


class _Fetcher:
    """Per-run state shared by the worker threads: config, cache, sessions, host slots, watchdog."""

    def __init__(self, config: FetchConfig, cache: ImageCache, keep_images: bool):
        self.config, self.cache, self.keep_images = config, cache, keep_images
        self.policy = AddressPolicy(tuple(config.allow_hosts))
        self.watchdog = _Watchdog()
        self._pool = _pool_manager(config)
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self.gpu = None  # a mmsa.gpudecode.BatchDecoder with config.gpu_decode and a GPU
        if config.gpu_decode and keep_images:
            from mmsa import gpudecode

            if gpudecode.available():
                self.gpu = gpudecode.BatchDecoder()
        # One decode at a time per core on the CPU; a thread waiting on the GPU's batch holds no core.
        self._decode_slots = _DECODE_SLOTS if self.gpu is None else contextlib.nullcontext()

    def __enter__(self) -> _Fetcher:
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.stop()
        self._pool.clear()
        if self.gpu is not None:
            self.gpu.close()

    def fetch(self, url: str, retry_failed: bool) -> FetchResult:
        start = time.monotonic()
        local_path = _local_path(url)
        if local_path is not None:
            return self._fetch_local(url, local_path, start)
        try:
            host = _check_url(url)
        except _Failure as failure:
            return _failed(url, failure, 0, start)
        repaired = False
        try:
            known = self.cache.lookup(url)
            if known is not None and not (retry_failed and known.status in RETRYABLE):
                return replace(known, url=url) if known.status != ImageStatus.OK else self._cached(url, known, start)
        except CacheDamaged:  # removed: a miss, fetched anew
            repaired = True
        result = self._fetch_http(url, host, start)
        if result.status not in _CONFIG_DEPENDENT:
            self.cache.record(url, result)
        return replace(result, cache_repaired=result.cache_repaired or repaired)

    def _fetch_local(self, url: str, path: str, start: float) -> FetchResult:
        if not self.config.allow_local_files:
            return _failed(url, _Failure(ImageStatus.LOCAL_FILE_REFUSED, "local files are not allowed"), 0, start)
        try:
            with open(path, "rb") as file:
                data = file.read(self.config.max_bytes + 1)
        except OSError as exc:
            return _failed(url, _Failure(ImageStatus.FILE_ERROR, str(exc)), 0, start)
        return self._store(url, data, None, 0, start)

    def _fetch_http(self, url: str, host: str, start: float) -> FetchResult:
        config = self.config
        deadline = math.inf
        attempts = 0
        while True:
            attempts += 1
            received = [0]
            try:
                with self._host_slot(host):
                    # The deadline runs from the first time this URL gets a slot on its host:
                    # waiting behind other downloads from a busy host does not use it up.
                    deadline = min(deadline, time.monotonic() + config.deadline)
                    with self.watchdog.watch(deadline, self.policy) as watch:
                        data, code = self._download(url, received, watch)
                return self._store(url, data, code, attempts, start)
            except _Failure as failure:
                last = failure
            if last.status.value not in RETRYABLE or attempts > config.retries:
                break
            wait_s = config.backoff * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
            if last.retry_after is not None:
                wait_s = max(wait_s, min(last.retry_after, config.max_retry_after))
            if time.monotonic() + wait_s >= deadline:
                break
            time.sleep(wait_s)
        return _failed(url, last, attempts, start, received[0])

    def _download(self, url: str, received: list[int], watch: _Watch) -> tuple[bytes, int]:
        """GET `url`, following redirects ourselves so that every hop is checked."""
        config = self.config
        timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        for hop in range(config.max_redirects + 1):
            try:
                response = self._pool.request("GET", url, preload_content=False, redirect=False, retries=False,
                                              timeout=timeout)
                try:
                    code = response.status
                    location = response.headers.get("Location")
                    if code in _REDIRECT_CODES and location:
                        url = urljoin(url, location.strip())
                        _check_url(url, redirected=True)
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
                    raise _Failure(ImageStatus.TIMEOUT, "deadline per image passed")
                return body, code
            except _Failure:
                raise
            except Exception as exc:
                failure = _classify(exc, watch)
                if hop:
                    failure.error = f"after {hop} redirect(s), at {url[:200]}: {failure.error}"
                raise failure from exc
        raise _Failure(ImageStatus.TOO_MANY_REDIRECTS, f"more than {config.max_redirects} redirects")

    def _cached(self, url: str, known: FetchResult, start: float) -> FetchResult:
        """The URL index's "ok" for `url`, its cached bytes checked (CacheDamaged) and, if images are kept,
        preprocessed."""
        with self._decode_slots:
            data = self.cache.load(known.image_key)
            if not self.keep_images:
                return replace(known, url=url)
            try:
                image = self._preprocess(data, known.http_code)
            except _Failure as failure:  # a pixel cap lower than when the bytes were fetched
                return _failed(url, failure, 0, start, known.bytes)
        return replace(known, url=url, image=image)

    def _store(self, url: str, data: bytes, code: int | None, attempts: int, start: float) -> FetchResult:
        """Check that `data` decodes and put it in the cache (unless these bytes are there already)."""
        if len(data) > self.config.max_bytes:
            failure = _Failure(ImageStatus.TOO_LARGE, f"over {self.config.max_bytes} bytes", code)
            return _failed(url, failure, attempts, start, len(data))
        image, repaired = None, False
        with self._decode_slots:
            key = hashlib.sha256(data).hexdigest()
            stored = self.cache.has(key)  # bytes that decoded before, under another URL
            if stored:
                try:
                    self.cache.load(key)
                except CacheDamaged:  # removed: stored again below
                    stored, repaired = False, True
            if self.keep_images or not stored:
                try:
                    image = self._preprocess(data, code)
                except _Failure as failure:
                    return _failed(url, failure, attempts, start, len(data))
            if not stored:
                self.cache.store(key, data)
        return FetchResult(
            post_id="",
            url=url,
            status=ImageStatus.OK.value,
            http_code=code,
            bytes=len(data),
            attempts=attempts,
            elapsed_s=round(time.monotonic() - start, 4),
            image_key=key,
            cache_repaired=repaired,
            image=image if self.keep_images else None,
        )

    def _preprocess(self, data: bytes, code: int | None) -> np.ndarray:
        try:
            decode = imaging.preprocess if self.gpu is None else self.gpu.preprocess
            return decode(data, self.config.image_size, self.config.max_pixels)
        except imaging.ImageError as exc:
            status = {
                imaging.NotAnImageError: ImageStatus.NOT_AN_IMAGE,
                imaging.TooManyPixelsError: ImageStatus.TOO_LARGE,
                imaging.DecodeError: ImageStatus.DECODE_ERROR,
            }[type(exc)]
            raise _Failure(status, str(exc), code) from exc

    @contextmanager
    def _host_slot(self, host: str) -> Iterator[None]:
        with self._lock:
            slot = self._host_slots.setdefault(host, threading.BoundedSemaphore(self.config.per_host))
        with slot:
            yield


def _failed(url: str, failure: _Failure, attempts: int, start: float, received: int = 0) -> FetchResult:
    return FetchResult(
        post_id="",
        url=url,
        status=failure.status.value,
        http_code=failure.http_code,
        bytes=received,
        attempts=attempts,
        error=failure.error[:500],
        elapsed_s=round(time.monotonic() - start, 4),
    )


def _local_path(url: str) -> str | None:
    """The file path if `url` names a local file (absolute path or file: URL), else None."""
    if url.lower().startswith("file:"):
        return url2pathname(urlsplit(url).path)
    if (url.startswith("/") and not url.startswith("//")) or re.match(r"[A-Za-z]:[\\/]", url):
        return url
    return None


def _check_url(url: str, redirected: bool = False) -> str:
    """The URL's host, or a _Failure if it is not an http(s) URL we can request."""
    prefix = "redirect to " if redirected else ""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise _Failure(ImageStatus.INVALID_URL, f"{prefix}{url[:200]!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme and scheme not in ("http", "https"):
        raise _Failure(ImageStatus.UNSUPPORTED_SCHEME, f"{prefix}{scheme}: URL")
    if not scheme or not parts.hostname or re.search(r"[\s\x00-\x1f\x7f]", url):
        raise _Failure(ImageStatus.INVALID_URL, f"{prefix}{url[:200]!r} is not an http(s) URL")
    return parts.hostname


def _http_failure(code: int, response: urllib3.BaseHTTPResponse) -> _Failure:
    error = f"HTTP {code} {response.reason or ''}".strip()
    if code == 404:
        return _Failure(ImageStatus.HTTP_404, error, code)
    if code == 410:
        return _Failure(ImageStatus.HTTP_410, error, code)
    if code == 408:
        return _Failure(ImageStatus.TIMEOUT, error, code)
    if code == 429 or code >= 500:
        status = ImageStatus.HTTP_429 if code == 429 else ImageStatus.HTTP_5XX
        return _Failure(status, error, code, _retry_after(response.headers.get("Retry-After")))
    return _Failure(ImageStatus.HTTP_ERROR, error, code)


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _read_body(response: urllib3.BaseHTTPResponse, max_bytes: int, received: list[int]) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _Failure(ImageStatus.TOO_LARGE, f"Content-Length {declared} is over {max_bytes} bytes", response.status)
    body = bytearray()
    while chunk := response.read(_CHUNK, decode_content=True):
        body += chunk
        received[0] = len(body)
        if len(body) > max_bytes:
            raise _Failure(ImageStatus.TOO_LARGE, f"body is over {max_bytes} bytes", response.status)
    return bytes(body)


def _classify(exc: Exception, watch: _Watch) -> _Failure:
    """Map an exception from the network stack to a status."""
    if watch.expired:
        return _Failure(ImageStatus.TIMEOUT, "deadline per image passed")
    if isinstance(exc, BlockedAddressError):
        return _Failure(ImageStatus.BLOCKED_ADDRESS, str(exc))
    if isinstance(exc, ResolveError):
        return _Failure(ImageStatus.CONNECTION_ERROR if exc.transient else ImageStatus.DNS_ERROR, str(exc))
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # a subclass of urllib3's TimeoutError
        return _Failure(ImageStatus.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return _Failure(ImageStatus.TIMEOUT, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # urllib3's LocationParseError among them
        return _Failure(ImageStatus.INVALID_URL, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return _Failure(ImageStatus.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}")
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
