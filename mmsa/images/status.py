"""The images stage's contract: every image gets one status from a closed set (docs/image_status.md), and
one FetchResult, the row of the status table and of the cache's URL index."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import numpy as np


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
    DECODE_ERROR = "decode_error"  # looks like an image but does not decode (truncated, corrupt), or its encoding


# Statuses worth trying again: retried within a run, and again with retry_failed=True.
RETRYABLE: frozenset[str] = frozenset(
    s.value for s in (ImageStatus.CONNECTION_ERROR, ImageStatus.TIMEOUT, ImageStatus.HTTP_429, ImageStatus.HTTP_5XX)
)

# Statuses decided by the URL text and the config alone: never stored in the URL index, so that
# a later run with other settings (allow_hosts, allow_local_files) decides them afresh.
CONFIG_DEPENDENT = frozenset(
    s.value
    for s in (
        ImageStatus.INVALID_URL,
        ImageStatus.UNSUPPORTED_SCHEME,
        ImageStatus.LOCAL_FILE_REFUSED,
        ImageStatus.FILE_ERROR,
        ImageStatus.BLOCKED_ADDRESS,
    )
)

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


class Failure(Exception):
    """Ends one attempt at an image with a status (raised by the HTTP client and the decoding step)."""

    def __init__(self, status: ImageStatus, error: str, http_code: int | None = None, retry_after: float | None = None):
        super().__init__(error)
        self.status, self.error, self.http_code, self.retry_after = status, error, http_code, retry_after


def failed(url: str, failure: Failure, attempts: int, start: float, received: int = 0) -> FetchResult:
    """The FetchResult of a URL whose last attempt ended in `failure`."""
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
