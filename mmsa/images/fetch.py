"""fetch_images: the images of (post_id, image_url) pairs, one FetchResult per pair, in order, whatever the URL,
server or bytes do (every failure one status of mmsa.images.status.ImageStatus).

This module schedules: each distinct URL once, at most a bounded number in flight (memory stays flat for any
number of items), on threads of this process or on worker processes as the config says; the work on one URL is
mmsa.images.worker's. Images that decode are stored as downloaded in an ImageCache under the SHA-256 of their
bytes; with keep_images, each result also carries the image preprocessed to uint8 RGB image_size x image_size.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Callable, Iterable

from mmsa.images import processes
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.status import FetchResult, ImageStatus
from mmsa.images.worker import Fetcher


def fetch_images(
    items: Iterable[tuple[str, str | None]],
    config: FetchConfig,
    cache: ImageCache,
    progress: bool = False,
    retry_failed: bool = False,
    keep_images: bool = False,
    on_result: Callable[[int, FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch the image of every (post_id, image_url); one FetchResult per item, in input order.

    Each distinct URL is fetched once, in the order the items first name it. A URL found in the
    cache's URL index is not fetched again; with retry_failed=True, those whose recorded status is
    RETRYABLE are. Never raises for a bad URL, server or image. With keep_images, every "ok" result
    carries its image preprocessed (cached bytes are decoded again): memory grows with the items, so
    pass a shard. on_result(index, result) is called, in this thread, as each item's result is known.
    The URLs go to `config.workers` threads of this process, or to worker processes when config.processes asks
    for them (mmsa.images.processes; threads where this process may not have children).
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
        _submitter(config)(config, cache, keep_images, retry_failed) as (submit, capacity),
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
    """A submitter on `workers` threads of this process: a context manager giving (submit(url) -> Future of its
    FetchResult, how many URLs may be in flight), as mmsa.images.processes.session does on worker processes."""
    with (
        Fetcher(config, cache, keep_images) as fetcher,
        ThreadPoolExecutor(config.workers, thread_name_prefix="mmsa-fetch") as pool,
    ):
        yield (lambda url: pool.submit(fetcher.fetch, url, retry_failed)), 2 * config.workers

def _submitter(config: FetchConfig) -> Callable:
    """Worker processes when config.processes asks for some (and this process may have children), else threads."""
    return processes.session if processes.resolve_processes(config.processes) else _threads


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    with tqdm(total=total, unit="img", disable=not enabled, smoothing=0.1) as bar:
        yield bar
