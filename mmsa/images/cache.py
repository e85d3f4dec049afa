"""The content-addressed image cache: downloaded bytes keyed by their SHA-256, and a URL index of results.

Imports neither torch nor the fetching code, so that readers of the cache (the dashboard's thumbnails) load fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mmsa import storage
from mmsa.images.status import FetchResult, ImageStatus


_STATUSES = frozenset(s.value for s in ImageStatus)


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
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed since the caller's has(): by another reader that found it damaged
            raise CacheDamaged(f"{path}: removed since it was looked up") from None
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
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            known = FetchResult(**json.loads(data))  # bytes: json.loads says what a flipped byte breaks (ValueError)
            if known.status not in _STATUSES:
                raise ValueError(f"not an image status: {known.status!r}")
            if known.status == ImageStatus.OK and not self.has(known.image_key):
                raise ValueError(f"no stored image {known.image_key}")
        except (ValueError, TypeError) as exc:  # a cut or altered file: bad UTF-8 or JSON, fields, status or key
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
