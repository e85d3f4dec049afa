"""FetchConfig: every setting of the images stage, in one value handed to the parts at construction (the
HTTP client, the worker, the worker processes), never patched into a module afterwards."""

from __future__ import annotations

from dataclasses import dataclass

from mmsa.images.decode import MAX_PIXELS


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
    max_pixels: int = MAX_PIXELS  # width x height cap, checked before decoding
    max_redirects: int = 5
    retries: int = 2  # extra attempts for RETRYABLE statuses
    backoff: float = 0.5  # first back-off wait in seconds, doubled per retry, with +-50% jitter
    max_retry_after: float = 10.0  # cap on a server's Retry-After
    workers: int = 16  # concurrent downloads (threads); at most one per core decodes at a time
    per_host: int = 8  # concurrent downloads from one host
    user_agent: str = "mmsa-fetch/0.1 (+image sentiment research)"
    ca_bundle: str | None = None  # CA certificates file for HTTPS (a private CDN's CA); default: certifi
    # Worker processes for download + decode + resize (mmsa.images.processes), chosen by fetch_images: 0 = threads
    # of this process; None = one per core on machines of more than 2 cores, else 0. With N > 0, `workers`
    # threads download in each process and `per_host` holds across them.
    processes: int | None = 0
    # Decode JPEGs on the GPU in batches (mmsa.images.gpudecode) where one is present; other formats, capped and
    # odd images stay on the CPU path. No effect without a GPU.
    gpu_decode: bool = False
