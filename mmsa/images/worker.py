"""One image URL to one FetchResult: what every fetch thread runs, in this process or in a worker process.

A local file (when allowed), the cache's URL index (a known result is not fetched again; with retry_failed the
RETRYABLE ones are), else the download (mmsa.images.client) under a per-host slot with retries, exponential
back-off with jitter and a capped Retry-After, none for other 4xx; then the bytes are decoded (a pixel cap
first, formats sniffed) and stored in the cache as downloaded. Never raises for a bad URL, server or image.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import re
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, ContextManager, Iterator
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from mmsa.options import usable_cores
from mmsa.images import decode
from mmsa.images.cache import CacheDamaged, ImageCache
from mmsa.images.client import HttpClient, check_url
from mmsa.images.config import FetchConfig
from mmsa.images.status import CONFIG_DEPENDENT, RETRYABLE, Failure, FetchResult, ImageStatus, failed

# Decoding, resizing and storing are CPU work: more threads at it than this process has cores only add GIL
# hand-offs and context switches. The default for every Fetcher of the process; downloads keep `workers`.
_DECODE_SLOTS = threading.BoundedSemaphore(usable_cores())


class Fetcher:
    """Per-fetch state shared by its threads: config, cache, HTTP client, host slots, decode slots.

    `decode_slots`: held while an image is decoded, resized and stored (default: one per core of this process,
    shared by every Fetcher in it); `host_slot(host)`: a context manager held while downloading from `host`
    (default: `config.per_host` slots per host among this Fetcher's threads). mmsa.images.processes passes its
    share of the cores and the host slots it shares across processes.
    """

    def __init__(self, config: FetchConfig, cache: ImageCache, keep_images: bool,
                 decode_slots: ContextManager | None = None,
                 host_slot: Callable[[str], ContextManager] | None = None):
        self.config, self.cache, self.keep_images = config, cache, keep_images
        self.client = HttpClient(config)
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self.host_slot = host_slot or self._own_host_slot
        self.gpu = None  # a mmsa.images.gpudecode.BatchDecoder with config.gpu_decode and a GPU
        if config.gpu_decode and keep_images:
            from mmsa.images import gpudecode

            if gpudecode.available():
                self.gpu = gpudecode.BatchDecoder()
        # One decode at a time per core on the CPU; a thread waiting on the GPU's batch holds no core.
        self._decode_slots = (decode_slots or _DECODE_SLOTS) if self.gpu is None else contextlib.nullcontext()

    def __enter__(self) -> Fetcher:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
        if self.gpu is not None:
            self.gpu.close()

    def fetch(self, url: str, retry_failed: bool) -> FetchResult:
        start = time.monotonic()
        path = _local_path(url)
        if path is not None:
            return self._fetch_local(url, path, start)
        try:
            host = check_url(url)
        except Failure as failure:
            return failed(url, failure, 0, start)
        repaired = False
        try:
            known = self.cache.lookup(url)
            if known is not None and not (retry_failed and known.status in RETRYABLE):
                return replace(known, url=url) if known.status != ImageStatus.OK else self._cached(url, known, start)
        except CacheDamaged:  # removed: a miss, fetched anew
            repaired = True
        result = self._fetch_http(url, host, start)
        if result.status not in CONFIG_DEPENDENT:
            self.cache.record(url, result)
        return replace(result, cache_repaired=result.cache_repaired or repaired)

    def _fetch_local(self, url: str, path: str, start: float) -> FetchResult:
        if not self.config.allow_local_files:
            return failed(url, Failure(ImageStatus.LOCAL_FILE_REFUSED, "local files are not allowed"), 0, start)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe would block open() for ever, a device read on
                raise OSError(f"not a regular file: {path}")
            with open(path, "rb") as file:
                data = file.read(self.config.max_bytes + 1)
        except OSError as exc:
            return failed(url, Failure(ImageStatus.FILE_ERROR, str(exc)), 0, start)
        return self._store(url, data, None, 0, start)

    def _fetch_http(self, url: str, host: str, start: float) -> FetchResult:
        config = self.config
        deadline = math.inf
        attempts = 0
        while True:
            attempts += 1
            received = [0]
            try:
                with self.host_slot(host):
                    # The deadline runs from the first time this URL gets a slot on its host:
                    # waiting behind other downloads from a busy host does not use it up.
                    deadline = min(deadline, time.monotonic() + config.deadline)
                    data, code = self.client.get(url, deadline, received)
                return self._store(url, data, code, attempts, start)
            except Failure as failure:
                last = failure
            if last.status.value not in RETRYABLE or attempts > config.retries:
                break
            wait_s = config.backoff * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
            if last.retry_after is not None:
                wait_s = max(wait_s, min(last.retry_after, config.max_retry_after))
            if time.monotonic() + wait_s >= deadline:
                break
            time.sleep(wait_s)
        return failed(url, last, attempts, start, received[0])

    def _cached(self, url: str, known: FetchResult, start: float) -> FetchResult:
        """The URL index's "ok" for `url`, its cached bytes checked (CacheDamaged) and, if images are kept,
        preprocessed."""
        with self._decode_slots:
            data = self.cache.load(known.image_key)
            if not self.keep_images:
                return replace(known, url=url)
            try:
                image = self._preprocess(data, known.http_code)
            except Failure as failure:  # a pixel cap lower than when the bytes were fetched
                return failed(url, failure, 0, start, known.bytes)
        return replace(known, url=url, image=image)

    def _store(self, url: str, data: bytes, code: int | None, attempts: int, start: float) -> FetchResult:
        """Check that `data` decodes and put it in the cache (unless these bytes are there already)."""
        if len(data) > self.config.max_bytes:
            failure = Failure(ImageStatus.TOO_LARGE, f"over {self.config.max_bytes} bytes", code)
            return failed(url, failure, attempts, start, len(data))
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
                except Failure as failure:
                    return failed(url, failure, attempts, start, len(data))
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
            to_pixels = decode.preprocess if self.gpu is None else self.gpu.preprocess
            return to_pixels(data, self.config.image_size, self.config.max_pixels)
        except decode.ImageError as exc:
            status = {
                decode.NotAnImageError: ImageStatus.NOT_AN_IMAGE,
                decode.TooManyPixelsError: ImageStatus.TOO_LARGE,
                decode.DecodeError: ImageStatus.DECODE_ERROR,
            }[type(exc)]
            raise Failure(status, str(exc), code) from exc

    @contextmanager
    def _own_host_slot(self, host: str) -> Iterator[None]:
        """The per-host cap among this process's threads: one semaphore of `per_host` slots per host."""
        with self._lock:
            slot = self._host_slots.setdefault(host, threading.BoundedSemaphore(self.config.per_host))
        with slot:
            yield


def _local_path(url: str) -> str | None:
    """The file path if `url` names a local file (absolute path or file: URL), else None."""
    if url.lower().startswith("file:"):
        return url2pathname(urlsplit(url).path)
    if (url.startswith("/") and not url.startswith("//")) or re.match(r"[A-Za-z]:[\\/]", url):
        return url
    return None
