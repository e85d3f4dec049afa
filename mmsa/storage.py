"""Where files live: a local path, or any fsspec URL (s3://bucket/prefix, gs://, az://, memory://, ...).

Dumps, the Parquet output with its work folder (shards, done markers) and the image cache may all be object
storage, so that Dask workers on several machines share them without a shared filesystem. The DuckDB file
stays local (DuckDB does not write to object storage); `mmsa.store` loads it from the bucket.

Configured the standard way, nothing of ours: for S3, s3fs (over botocore) reads AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_PROFILE, ~/.aws/ and
instance roles; fsspec's own configuration (FSSPEC_S3_* variables, ~/.config/fsspec/*.json) adds
filesystem options, e.g. `FSSPEC_S3_ENDPOINT_URL`. All I/O to object storage goes through fsspec: pyarrow
reads and writes Parquet through it too (pyarrow's own S3 multipart writes failed against moto 5.2.1's
server, `CompleteMultipartUpload ... INTERNAL_FAILURE`, where s3fs's work; tests/test_s3.py).

Atomic writes: an object store makes an object visible only once its upload is complete (a PUT, or a
multipart upload's completion), and a rewrite replaces it whole, so a reader or a crash never sees half a
shard there; local files keep writing to a temporary name and renaming.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmsa import files

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_SCHEMES = ("file", "local")
_WEB_SCHEMES = ("http", "https")  # dumps over http(s) are downloaded by mmsa.source, as before


def is_remote(location) -> bool:
    """True for an fsspec URL of a filesystem other than the local one (and other than http(s))."""
    if isinstance(location, Path):
        return False
    if hasattr(location, "fs") and hasattr(location, "protocol"):  # a UPath
        return location.protocol not in ("", *_LOCAL_SCHEMES)
    found = _SCHEME.match(str(location))
    return bool(found) and found.group(1).lower() not in (*_LOCAL_SCHEMES, *_WEB_SCHEMES)


def path(location):
    """A pathlib.Path for a local location, a universal_pathlib UPath (same interface) for an fsspec URL."""
    if is_remote(location):
        if hasattr(location, "fs"):
            return location
        from upath import UPath

        return UPath(str(location))
    if isinstance(location, str) and location.startswith("file://"):
        location = location[len("file://"):]
    return Path(location)


@contextmanager
def _named(target):
    """An upload's FileNotFoundError with the object's URL: s3fs says only "The specified bucket does not exist"."""
    try:
        yield
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{target}: {err}") from err


def write_bytes(location, data: bytes) -> None:
    """Write a file whole or not at all: mmsa.files' temporary name then a rename locally; one upload on object
    storage."""
    target = path(location)
    if is_remote(target):
        with _named(target):
            target.fs.pipe_file(target.path, data)
        return
    files.write_bytes(target, data)


def write_text(location, text: str):
    """write_bytes for text (UTF-8); returns the location."""
    write_bytes(location, text.encode("utf-8"))
    return location


def write_table(table: pa.Table, location) -> None:
    """A Parquet file written whole (see write_bytes); remote through fsspec."""
    target = path(location)
    if not is_remote(target):
        with files.atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with _named(target):
        target.fs.pipe_file(target.path, sink.getvalue().to_pybytes())


def read_table(location, **kwargs) -> pa.Table:
    source = path(location)
    if is_remote(source):
        return pq.read_table(source.path, filesystem=source.fs, **kwargs)
    return pq.read_table(source, **kwargs)


def upload(local: Path, location) -> None:
    """Copy a local file to `location` (an upload is atomic on object storage; a rename locally)."""
    target = path(location)
    if is_remote(target):
        with _named(target):
            target.fs.put_file(str(local), target.path)
        return
    if Path(local).resolve() != target.resolve():
        files.copy(local, target)


def download(location, folder: Path) -> Path:
    """Copy one remote file into `folder` (streamed, under its own name, renamed into place when whole), in a
    subfolder named by its whole URL: a glob's `a/part.jsonl` and `b/part.jsonl` are two files."""
    source = path(location)
    target = folder / hashlib.sha256(str(source).encode()).hexdigest()[:12] / source.name
    with files.atomic_path(target) as tmp:
        source.fs.get_file(source.path, str(tmp))
    return target


def list_files(location) -> list:
    """The files a remote dump location names: itself, a folder's files (not hidden), or a glob's matches."""
    source = path(location)
    fs = source.fs
    protocol = source.protocol
    if any(ch in source.path for ch in "*?["):
        names = fs.glob(source.path)
    elif fs.isdir(source.path):
        names = [n for n in fs.ls(source.path, detail=False)]
    elif fs.isfile(source.path):
        names = [source.path]
    else:
        names = []
    names = sorted(n for n in names if fs.isfile(n) and not n.rstrip("/").rsplit("/", 1)[-1].startswith("."))
    return [path(f"{protocol}://{n}") for n in names]
