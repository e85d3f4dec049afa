"""The stage over files behind `mmsa fetch`: the images of every post of a dump into the image cache, and one status
row per image to a Parquet table, without scoring (beside mmsa.pipeline's stages over files for `mmsa score`)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from mmsa import files, source, storage
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images
from mmsa.images.status import STATUS_TABLE_SCHEMA, ImageStatus


@dataclass
class FetchSummary:
    """What `fetch_dump` did, for printing."""

    status_path: Path
    counts: dict[str, int]  # the table's rows per status: one per image, one no_image per post without any
    posts: int  # valid posts read
    rejected_rows: int  # dump rows that are not valid posts (see mmsa.source), not in the table
    seconds: float
    cache_repaired: int = 0  # damaged cache entries met, removed and fetched anew (ImageCache)

    def describe(self) -> str:
        without = self.counts.get(ImageStatus.NO_IMAGE.value, 0)
        images = sum(self.counts.values()) - without
        rate = images / self.seconds if self.seconds else 0.0
        ok = self.counts.get(ImageStatus.OK.value, 0)
        share = f"{100 * ok / images:.1f}%" if images else "-"
        by_status = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.posts} posts, {self.posts - without} with images; {images} images in {self.seconds:.1f} s "
            f"({rate:.0f} images/s), ok {share}\n  status table rows: {by_status}\n"
            f"  {self.rejected_rows} dump rows rejected as invalid posts\n"
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
) -> FetchSummary:
    """Fetch the images of every post in `dump` into the cache and write the status table.

    The table (Parquet, STATUS_TABLE_SCHEMA) goes to `status_path`, by default
    CACHE/status/<dump name>.parquet, replaced atomically. Posts are fetched in batches of
    `batch_size`, so memory stays flat for any dump; the URL index makes a re-run resume. `options`: how
    records become posts (mmsa.source.ReadOptions; default: each record's shape tells its format). The dump, the
    cache and the table may be fsspec URLs (mmsa.storage). Threads or worker processes, as for fetch_images.
    """
    started = time.monotonic()
    cache_dir = storage.path(cache_dir)  # local, or a bucket: then the downloaded dump and the table stay local first
    with files.scratch(cache_dir if isinstance(cache_dir, Path) else None) as scratch:
        paths = source.resolve(dump, scratch)
        if status_path is None:
            stem = re.sub(r"[^\w.-]", "_", Path(urlsplit(str(dump)).path).stem)  # a glob's * and ? are no file names
            status_path = cache_dir / "status" / f"{stem}.parquet"
        status_path = storage.path(status_path)
        local_status = status_path if isinstance(status_path, Path) else scratch / status_path.name
        cache = ImageCache(cache_dir)
        counts: dict[str, int] = {}
        posts = rejected = repaired = 0
        batch: list[tuple[str, str | None]] = []

        def flush() -> None:
            results = fetch_images(batch, config, cache, progress=progress, retry_failed=retry_failed)
            nonlocal repaired
            for result in results:
                counts[result.status] = counts.get(result.status, 0) + 1
            repaired += len({r.url for r in results if r.cache_repaired})
            writer.write_table(pa.Table.from_pylist([r.row() for r in results], schema=STATUS_TABLE_SCHEMA))
            batch.clear()

        with files.atomic_path(local_status) as tmp, pq.ParquetWriter(tmp, STATUS_TABLE_SCHEMA) as writer:
            for shard in source.iter_shards(paths, min(batch_size, 10_000), dump_name=str(dump), options=options):
                rejected += len(shard.rejected)
                posts += shard.posts.num_rows
                batch.extend((post_id, url) for post_id, urls in zip(shard.posts["post_id"].to_pylist(),
                                                                     shard.posts["image_urls"].to_pylist())
                             for url in urls or [None])
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
        if local_status is not status_path:
            storage.upload(local_status, status_path)
    return FetchSummary(status_path, counts, posts, rejected, time.monotonic() - started, repaired)
