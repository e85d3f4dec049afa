"""Read a post dump (JSONL, CSV or Parquet; local path or http(s) URL) and validate it row by row.

Rows are streamed, never loaded whole, so memory stays flat however large the dump is. A row
that fails validation becomes a rejected row with a reason; it never stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from mmsa.schema import COUNT_FIELDS, KNOWN_FIELDS, POST_SCHEMA, TEXT_FIELDS

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DUMP_DOWNLOAD_TIMEOUT = (10, 60)


def is_url(src: str | Path) -> bool:
    return urlparse(str(src)).scheme in ("http", "https")


def dump_format(name: str) -> str:
    suffix = Path(urlparse(name).path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {name!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def localise(src: str | Path, workdir: Path) -> Path:
    """Return a local path for the dump, downloading it (streamed) if it is a URL."""
    if not is_url(src):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"dump not found: {path}")
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / ("dump" + Path(urlparse(str(src)).path).suffix.lower())
    with requests.get(str(src), stream=True, timeout=DUMP_DOWNLOAD_TIMEOUT) as resp:
        resp.raise_for_status()
        with tempfile.NamedTemporaryFile(dir=workdir, delete=False) as tmp:
            shutil.copyfileobj(resp.raw, tmp)
    Path(tmp.name).replace(target)
    return target


def content_key(path: Path) -> str:
    """A short content hash: the same dump always maps to the same work folder and file names."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _raw_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict | str]]:
    """(line number, row dict) per row, or (line number, error text) for an unreadable row."""
    if fmt == "jsonl":
        with path.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, f"invalid JSON: {exc.msg}"
                    continue
                yield (n, row) if isinstance(row, dict) else (n, "invalid JSON: not an object")
    elif fmt == "csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                yield n, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
    else:
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield n, row


def _timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, date):
        ts = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        ts = datetime.fromisoformat(value.strip())
    else:
        raise ValueError("not an ISO-8601 string")
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("not a count")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    number = int(value) if isinstance(value, (int, str)) else None
    if number is None or number < 0:
        raise ValueError("not a non-negative integer")
    return number


def validate(row: dict) -> dict:
    """Turn one raw row into a post (POST_SCHEMA fields) or raise ValueError with the reason."""
    post_id = row.get("post_id")
    if post_id is None or isinstance(post_id, (float, bool)) or not str(post_id).strip():
        raise ValueError("missing post_id")
    post = {"post_id": str(post_id).strip()}
    if row.get("created_at") in (None, ""):
        raise ValueError("missing created_at")
    try:
        post["created_at"] = _timestamp(row["created_at"])
    except (ValueError, TypeError):
        raise ValueError(f"created_at is not ISO-8601: {str(row['created_at'])[:40]!r}") from None
    for name in TEXT_FIELDS:
        value = row.get(name)
        post[name] = None if value is None or (isinstance(value, str) and not value.strip()) else str(value)
    for name in COUNT_FIELDS:
        try:
            post[name] = _count(row.get(name))
        except (ValueError, TypeError):
            raise ValueError(f"{name} is not a non-negative integer: {str(row.get(name))[:20]!r}") from None
    if post["text"] is None and post["image_url"] is None:
        raise ValueError("nothing to score: no text and no image_url")
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    post["extra"] = json.dumps(extra, default=str, ensure_ascii=False) if extra else None
    return post


@dataclass
class Shard:
    """A run's unit of work: consecutive accepted posts, plus the rows rejected on the way to them."""

    index: int
    posts: pa.Table
    rejected: list[dict] = field(default_factory=list)


def iter_shards(path: Path, shard_size: int, dump_name: str | None = None) -> Iterator[Shard]:
    """Stream a local dump as validated shards. Every input row lands in exactly one shard,
    as a post or as a rejected row (duplicates of an earlier post_id are rejected)."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    fmt = dump_format(dump_name or path.name)
    seen: dict[str, int] = {}
    posts: list[dict] = []
    rejected: list[dict] = []
    index = 0
    for line, row in _raw_rows(path, fmt):
        try:
            if isinstance(row, str):
                raise ValueError(row)
            post = validate(row)
            if post["post_id"] in seen:
                raise ValueError(f"duplicate post_id (first seen at row {seen[post['post_id']]})")
        except ValueError as exc:
            raw = row if isinstance(row, str) else json.dumps(row, default=str, ensure_ascii=False)
            pid = row.get("post_id") if isinstance(row, dict) else None
            rejected.append({"post_id": None if pid is None else str(pid), "reason": str(exc), "raw": raw[:2000], "line": line})
            continue
        seen[post["post_id"]] = line
        posts.append(post)
        if len(posts) == shard_size:
            yield Shard(index, pa.Table.from_pylist(posts, schema=POST_SCHEMA), rejected)
            index, posts, rejected = index + 1, [], []
    if posts or rejected or index == 0:
        yield Shard(index, pa.Table.from_pylist(posts, schema=POST_SCHEMA), rejected)
