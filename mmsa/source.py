"""Read a post dump and validate it row by row: the source stage.

A dump is one file, a folder of files or a glob of them (read as one dump, files in name order), or
an http(s) URL of one file. Files are JSONL, CSV or Parquet; JSONL and CSV may be compressed with
gzip (`.gz`) or zstd (`.zst`, long windows allowed, as Reddit dumps need). Records are streamed, never
loaded whole, so memory stays flat however large the dump is (but for the set of post ids seen, which
makes a post that two overlapping files both hold count once): rejected records too go out with their shard.

Each record is read by its platform's reader (mmsa.readers: X API v2, Reddit, Bluesky Jetstream,
Mastodon, the flat contract, or a field mapping), then validated, tagged with its language (mmsa.language: the
dump's tag, else identified from the text) and with brands. A record
that fails becomes a rejected row with a reason; one that is not a post (a like, a comment) is
skipped and counted; neither ever stops the run.
"""

from __future__ import annotations

import ast
import codecs
import csv
import glob
import gzip
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3
import zstandard

from mmsa import faults, files, language, readers
from mmsa.brands import BrandTagger, load_rules, name_key, spans
from mmsa.readers import Skip
from mmsa.readers.common import count
from mmsa.readers.flat import mapped, parse_mapping
from mmsa.options import DEFAULT_MAX_IMAGES
from mmsa.schema import COUNT_FIELDS, KNOWN_FIELDS, POST_SCHEMA, TEXT_FIELDS

log = logging.getLogger(__name__)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
DUMP_DOWNLOAD_TIMEOUT = (10, 60)
# zstd frames of Reddit's monthly dumps use windows up to 2 GiB; the decoder refuses them unless allowed.
ZSTD_MAX_WINDOW = 2**31
_EPOCH = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_URL_SEPARATOR = re.compile(r"(?:\s*[,;|]\s*|\s+)(?=https?://)", re.IGNORECASE)
_SERIAL_EPOCH = datetime(1899, 12, 30, tzinfo=timezone.utc)  # day 0 of Excel's and Sheets' serial dates
_SERIAL_DAYS = (20_000, 80_000)
# Bumped when `validate` makes something else of the same record (2: times outside 1970-2100 and counts past
# 10^15 rejected, lone surrogates mended, brand names left out of language identification; 3: whole numbers of
# export types read as counts and ids, YYYYMMDD days; 4: bytes that are not UTF-8 read as Windows-1252, CSV quotes
# read strictly, other separators told by the header, UTF-8 binary as text, a cut .json file's records read; 5:
# spreadsheet serial days, brand rules folding strokes, more apostrophes and ™, Reddit comments read and its
# removal notices left out, a cell of several image URLs, counts with thousands separators, UTF-16 files, a tweet
# per line, Mastodon's unknown media; 6: Reddit's markdown read as its words and its invisible-only bodies left out,
# pandas' list cells, MySQL's escapes over several CSV lines, YYYYMMDD days as floats, X's shares by the one count
# rule, Bluesky's video posters, Mastodon's boosts without a handle, shards cut at REJECTED_PER_SHARD rejections),
# so a dump's shards are cut again.
VALIDATION = 6
REJECTED_PER_SHARD = 10_000  # rejected records held at most, raw text of up to 2,000 characters each
CSV_FIELD_LIMIT = 1 << 26  # characters in one CSV field: a long post reads as it does from JSONL (the default: 128 KiB)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)  # a post dated after is a broken record, as one before 1970
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair, left by a tweet cut inside an emoji


@dataclass
class ReadOptions:
    """How records become posts; plain data (it crosses processes, and keys the dump's work folder)."""

    source_format: str | None = None  # a mmsa.readers name; None: each record's shape decides
    mapping: dict[str, str] = field(default_factory=dict)  # {flat field: path in the record}, for "flat"
    brand_rules: dict | None = None  # parsed brands file (mmsa.brands)
    max_images: int = DEFAULT_MAX_IMAGES  # images kept per post, in the post's order

    @classmethod
    def build(cls, source_format: str | None = None, mapping: dict[str, str] | None = None,
              brands: str | Path | None = None, max_images: int = DEFAULT_MAX_IMAGES) -> ReadOptions:
        """From command-line values; every mistake in them is a ValueError said before any reading."""
        if source_format is not None:
            readers.reader(source_format)
        if mapping:
            if source_format not in (None, "flat"):
                raise ValueError(f"--map applies to the flat format, not to {source_format!r}")
            parse_mapping(mapping)
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        rules = None
        if brands is not None:
            if not Path(brands).is_file():
                raise FileNotFoundError(f"brands file not found: {brands}")
            rules = load_rules(brands)
        return cls(source_format, dict(mapping or {}), rules, max_images)

    def reader(self):
        if self.mapping:
            return mapped(parse_mapping(self.mapping))
        return readers.reader(self.source_format) if self.source_format else readers.auto


def is_url(src: str | Path) -> bool:
    return urlparse(str(src)).scheme in ("http", "https")


def file_kind(name: str) -> tuple[str, str | None]:
    """(format, compression) from a file name: `x.jsonl.zst` -> ("jsonl", "zstd"). A compressed file
    with no format before the compression's suffix (Reddit's `RS_2023-01.zst`) is JSONL."""
    suffixes = [s.lower() for s in Path(urlparse(name).path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in FORMATS:
        fmt = FORMATS[suffix]
    elif compression:
        fmt = "jsonl"
    else:
        raise ValueError(f"cannot tell the format of {name!r}: expected one of {', '.join(FORMATS)}"
                         f" (optionally compressed: {', '.join(COMPRESSIONS)})")
    if fmt == "parquet" and compression:
        raise ValueError(f"{name!r}: Parquet compresses inside the file; {compression} around it is not read")
    return fmt, compression


def _is_pattern(src: str) -> bool:
    return any(c in src for c in "*?[")


def resolve(src: str | Path, workdir: Path, warn: bool = True) -> list[Path]:
    """The dump's local files, in name order: a URL is downloaded (streamed) into `workdir`; a folder
    gives its readable files; a glob its matches. An fsspec URL (s3://bucket/dumps/2026-01-01.jsonl.zst,
    a folder or glob there) is listed the same way and its files downloaded into `workdir` (mmsa.storage).
    `warn`: name a folder's files of no dump format (False for a check before the run, which names them)."""
    from mmsa import storage

    if is_url(src):
        return [localise(src, workdir)]
    if storage.is_remote(src):
        found = _dump_files(storage.list_files(src), src, warn)
        if not found:
            raise FileNotFoundError(f"dump not found: no JSONL, CSV or Parquet file at {src}")
        return [storage.download(f, workdir) for f in found]
    text = str(src)
    if _is_pattern(text) and not Path(text).exists():
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"dump not found: no file matches {text}")
        return _utf8_names(files)
    path = Path(src)
    if path.is_dir():
        files = _dump_files(sorted(p for p in path.iterdir() if p.is_file()), path, warn)
        if not files:
            raise FileNotFoundError(f"dump not found: no JSONL, CSV or Parquet file in {path}")
        return _utf8_names(files)
    if not path.is_file():
        raise FileNotFoundError(f"dump not found: {path}")
    return _utf8_names([path])


def _utf8_names(files: list[Path]) -> list[Path]:
    """The files, refused with their name when it is not UTF-8: a name is stored with the rows it gives."""
    for f in files:
        try:
            str(f).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"dump file name is not UTF-8: {os.fsencode(f)!r}; rename the file") from None
    return files


def _dump_files(files: list, folder, warn: bool) -> list:
    """A folder's files of a dump format (JSONL, CSV, Parquet); the others, but for hidden ones and those Spark
    and Hadoop write beside their data (`_SUCCESS`, `.part-0.crc`), are named in a warning (a notes file is no
    dump, but posts saved as `.txt` would otherwise be left out without a word)."""
    files = [f for f in files if not f.name.startswith(".")]
    other = [f.name for f in files if not _readable(f.name) and not f.name.startswith("_")]
    if other and warn:
        log.warning("%s: %d file(s) of no dump format (JSONL, CSV, Parquet) not read: %s%s", folder, len(other),
                    ", ".join(other[:5]), ", ..." if len(other) > 5 else "")
    return [f for f in files if _readable(f.name)]


def _readable(name: str) -> bool:
    try:
        file_kind(name)
    except ValueError:
        return False
    return True


def check_served(url: str) -> None:
    """Raise FileNotFoundError, worded as localise() words it, when a dump URL is not served (no connection,
    404, 410): `mmsa score` says so in one line before Prefect starts. Any other answer (a server that
    refuses HEAD with 405, a 5xx that may pass) is left to the download."""
    try:
        status = requests.head(url, allow_redirects=True, timeout=DUMP_DOWNLOAD_TIMEOUT).status_code
    except requests.RequestException as exc:
        raise FileNotFoundError(f"dump not downloadable from {url}: {type(exc).__name__}: {exc}") from None
    if status in (404, 410):
        raise FileNotFoundError(f"dump not downloadable from {url}: HTTP {status}")


_AGAIN = "nothing was scored; run the same command again once the server answers"  # a dump download's failure


def localise(src: str | Path, workdir: Path) -> Path:
    """Return a local path for one dump file, downloading it (streamed) if it is a URL."""
    if not is_url(src):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"dump not found: {path}")
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / ("dump" + "".join(Path(urlparse(str(src)).path).suffixes[-2:]).lower())
    try:
        with requests.get(str(src), stream=True, timeout=DUMP_DOWNLOAD_TIMEOUT) as resp:
            resp.raise_for_status()
            # A server that gzips JSON on the fly (Content-Encoding) sent the dump itself; a `.gz` file labelled so
            # is a misconfigured server's way to send the file as it is.
            resp.raw.decode_content = target.suffix not in COMPRESSIONS
            with files.atomic_path(target) as tmp, tmp.open("wb") as fh:
                try:
                    shutil.copyfileobj(resp.raw, fh)
                except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:  # the server or network dropped it
                    size = resp.headers.get("Content-Length", "")
                    raise faults.TransientError(
                        f"the dump's download from {src} broke off after {resp.raw.tell():,} bytes"
                        f"{f' of {int(size):,}' if size.isdigit() else ''} ({type(exc).__name__}): {_AGAIN}") from None
    except requests.HTTPError as exc:
        code = exc.response.status_code
        if code in (408, 429) or code >= 500:  # the server is busy or down: the flow tries again (mmsa.faults)
            raise faults.TransientError(f"the dump's server answered HTTP {code} for {src}: {_AGAIN}") from None
        raise FileNotFoundError(f"dump not downloadable from {src}: HTTP {code}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        if not _may_answer_later(exc):
            raise FileNotFoundError(f"dump not downloadable from {src}: {type(exc).__name__}: {exc}") from None
        raise faults.TransientError(f"the dump's server at {src} did not answer ({type(exc).__name__}): {_AGAIN}") from None
    except requests.RequestException as exc:  # a dump that cannot be asked for is bad input, said in one line
        raise FileNotFoundError(f"dump not downloadable from {src}: {type(exc).__name__}: {exc}") from None
    return target


def _may_answer_later(exc: requests.RequestException) -> bool:
    """Whether a failed connection may work on a retry (a refusal, a reset, a timeout: a server restarting or
    busy), not a host name that resolves to nothing or a certificate that does not hold."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError holds the cause
    if isinstance(reason, urllib3.exceptions.NameResolutionError):  # "no such name", not a resolver's blip (EAI_AGAIN)
        return getattr(reason.__cause__, "errno", None) not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
    return True


def files_key(path: Path | list[Path]) -> str:
    """A short hash of the dump files' bytes (and of their names, when there are several): which records the
    dump holds, whatever its path."""
    paths = [path] if isinstance(path, Path) else list(path)
    digest = hashlib.sha256()
    for p in paths:
        if len(paths) > 1:
            digest.update(f"\0{p.name}\0".encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def content_key(files: str, options: ReadOptions | None = None) -> str:
    """A short hash of the files (`files_key`), of how they are read (`reading_key`), of the shards' schema, of the
    language rules and of the validation's version: the same dump read the same way always maps to the same work
    folder and file names, and shards or results written otherwise are never picked up."""
    text = str(POST_SCHEMA) + language.KEY + str(VALIDATION) + files + reading_key(options)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reading_key(options: ReadOptions | None = None) -> str:
    """A short hash of how a dump is read as its user told it (format, mapping, brand rules, images per post): a
    backfill's day read otherwise than when it was scored (a brand added) is not done."""
    return hashlib.sha256(json.dumps(asdict(options or ReadOptions()), sort_keys=True).encode()).hexdigest()[:16]


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a file of zstd frames, one after another, read as they are needed.

    zstandard's stream_reader ends quietly when a file stops inside a frame (a cut download would pass
    for a shorter dump); here that raises ZstdError. Windows up to ZSTD_MAX_WINDOW are accepted."""

    def __init__(self, raw):
        self.raw = raw
        self.dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self.frame = self.dctx.decompressobj()
        self.in_frame = False
        self.out = b""
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.pos >= len(self.out):
            data = self.raw.read(1 << 16)  # about 1 MB decoded at Reddit's ratios: memory stays flat
            if not data:
                if self.in_frame:
                    raise zstandard.ZstdError("the file ends inside a zstd frame (truncated?)")
                return 0
            parts = []
            while data:
                self.in_frame = True
                parts.append(self.frame.decompress(data))
                data = b""
                if self.frame.eof:  # the next frame, if any, starts in what this one left over
                    data, self.frame, self.in_frame = self.frame.unused_data, self.dctx.decompressobj(), False
            self.out, self.pos = b"".join(parts), 0
        n = min(len(buffer), len(self.out) - self.pos)
        buffer[:n] = self.out[self.pos:self.pos + n]
        self.pos += n
        return n


def _windows_1252(error: UnicodeDecodeError) -> tuple[str, int]:
    """A codecs error handler: bytes that are not UTF-8 read as Windows-1252, the code page Excel writes a CSV in
    on Windows ("José", not "Jos\ufffd"); the five bytes it leaves undefined, as Latin-1."""
    bad = error.object[error.start:error.end]
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad), error.end


_NOT_UTF8 = "mmsa.windows-1252"
codecs.register_error(_NOT_UTF8, _windows_1252)


@contextmanager
def _open_text(path: Path, compression: str | None):
    """The file's text: UTF-8 (bytes that are not, as Windows-1252), or UTF-16 after its byte-order mark (Excel's
    "Unicode text" save, tab-separated)."""
    with path.open("rb") as raw:
        if compression == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif compression == "zstd":
            stream = io.BufferedReader(_ZstdFrames(raw), 1 << 20)
        else:
            stream = raw
        utf16 = stream.peek(2)[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
        with io.TextIOWrapper(stream, encoding="utf-16" if utf16 else "utf-8-sig",
                              errors="replace" if utf16 else _NOT_UTF8, newline="") as fh:
            yield fh


@dataclass
class Unreadable:
    """A line that is no record: why, and the line itself (kept in rejected_posts.raw, for whoever mends it)."""

    reason: str
    raw: str = ""


@dataclass
class CsvHeader:
    """A CSV file's header row: its column names and the line as read (a file without a header row has its
    first post here, so the header is checked before the rows: mmsa.source.iter_shards)."""

    names: list[str]
    raw: str


def _raw_rows(path: Path, name: str | None = None) -> Iterator[tuple[int, dict | Unreadable | Skip | CsvHeader]]:
    """(line number, record) per record, or (line number, Unreadable) for an unreadable one; a CSV file's header
    row first, as a CsvHeader; a JSONL line `[]`, a Skip. A JSONL line
    holding an array of objects (a saved API response) gives each of them, under the same line; a `.json` file
    of indented JSON, each of its records (`_document`). A file that breaks off (a truncated download, a corrupt
    frame) ends with one error row after the records read before the break, so the dump's other files are still
    read."""
    fmt, compression = file_kind(name or path.name)
    document = ".json" in [x.lower() for x in Path(name or path.name).suffixes]  # may be one indented document
    n = 0
    try:
        if fmt == "jsonl":
            with _open_text(path, compression) as fh:
                first = True
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an int of 4,300+ digits
                        if (first and document and line.lstrip()[:1] in ("[", "{")
                                and (whole := _document(path, compression)) is not None):
                            yield from whole  # one indented JSON document, not a record per line
                            return
                        first = False
                        reason = f"invalid JSON: {getattr(exc, 'msg', None) or _why(exc)}"
                        yield n, Unreadable(reason, line.rstrip("\r\n")[:2000])
                        continue
                    first = False
                    if row == []:  # a page of no records (an API's empty answer, saved)
                        yield n, Skip("empty JSON array")
                        continue
                    if isinstance(row, list) and row and all(isinstance(r, dict) for r in row):
                        for item in row:
                            yield n, item
                        continue
                    yield n, row if isinstance(row, dict) else Unreadable("invalid JSON: not an object",
                                                                          line.rstrip("\r\n")[:2000])
        elif fmt == "csv":
            csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
            with _open_text(path, compression) as fh:
                for n, row in _csv_rows(fh):  # n: where a file that breaks off (below) broke
                    yield n, row
        else:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                for row in _parquet_rows(batch):
                    n += 1
                    yield n, row
    except (OSError, EOFError, ValueError, csv.Error, pa.ArrowException, zstandard.ZstdError) as exc:
        yield n + 1, Unreadable(f"unreadable file from here: {type(exc).__name__}: {exc}"[:300])


class _Held:
    """Lines, counted, keeping those read since `mark()`: the lines of the CSV row being read."""

    def __init__(self, lines):
        self.lines, self.held, self.count = lines, [], 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.held.append(line)
        self.count += 1
        return line

    def mark(self) -> None:
        self.held = []


_BREAK = re.compile(r"\r\n|\r|\n")
# Lines whose every backslash escapes what MySQL writes (itself, quotes, a separator, a line break, \0 \b \n \r \t
# \Z, and \N for NULL): only such a row is read with backslash escapes. Possessive: a long field costs no
# backtracking state.
_MYSQL_ESCAPES = re.compile(r"(?:[^\\]++|\\[\\\"'0bnrtZN,;\t|\r\n])*+", re.DOTALL)


def _csv_rows(fh) -> Iterator[tuple[int, dict | Unreadable | CsvHeader]]:
    """A CSV file's header row (a CsvHeader) and rows, each with the line it starts on. Read strictly, so that a
    quote never closed ends the file as one rejection, not as one field holding every later line (posts lost
    without a word). A row strictness refuses for a stray quote is read with backslash escapes (MySQL's \\", over
    as many lines as its field holds), else leniently from its first line alone (a space after a closing quote), as
    the csv module reads by default; the lines after it strictly again."""
    header = fh.readline()  # "" at the end of an empty file
    delimiter = _delimiter(header)
    lines = _Held(itertools.chain([header] if header else [], fh))
    reader = csv.DictReader(lines, delimiter=delimiter, strict=True)
    if reader.fieldnames is None:
        return
    names = reader.fieldnames
    yield lines.count, CsvHeader(names, _csv_line(names))
    lines.mark()
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            held, before = lines.held, lines.count - len(lines.held)  # its lines (blank ones before it first)
            first = next((k for k, line in enumerate(held) if line.strip()), 0)
            if "expected after" not in str(exc):  # a quote never closed, a field past the size limit
                reason = "a quoted field never closes" if "end of data" in str(exc) else str(exc)
                yield before + first + 1, Unreadable(f"unreadable file from here: {reason}")
                return
            retry = _Held(itertools.chain(held[first:], lines.lines))
            try:  # MySQL's \" inside a field of several lines: the row whole, its lines not read again as rows
                row = next(csv.DictReader(retry, fieldnames=names, delimiter=delimiter, strict=True, escapechar="\\"))
                if not all(_MYSQL_ESCAPES.fullmatch(line) for line in retry.held):  # a path's C:\dir\" is no escape
                    raise csv.Error("not MySQL's escapes")
                used, retry.held = len(retry.held), []
            except (csv.Error, StopIteration):
                row = next(csv.DictReader([held[first]], fieldnames=names, delimiter=delimiter))
                used, retry.held = 1, retry.held[1:]
            lines.lines, lines.count = itertools.chain(retry.held, retry.lines), before + first + used
            reader = csv.DictReader(lines, fieldnames=names, delimiter=delimiter, strict=True)
        lines.mark()
        # its first line: the lines read less the line breaks its quoted fields hold (blank lines before it skipped)
        n = lines.count - sum(len(_BREAK.findall(v.rstrip("\r\n"))) for v in (*row.values(), *(row.get(None) or ()))
                              if isinstance(v, str))
        extra = row.pop(None, None)  # values past the header's columns: the row's are misaligned
        if extra:
            yield n, Unreadable(f"CSV row has {len(row) + len(extra)} fields, its header {len(row)}",
                                ",".join([*(v or "" for v in row.values()), *extra])[:2000])
            continue
        yield n, {k: (v.rstrip("\r\n") if isinstance(v, str) else v) or None for k, v in row.items()}


def _delimiter(header: str) -> str:
    """A CSV file's field separator, told by its header row outside quoted names: the most frequent of comma,
    semicolon (Excel where the comma is the decimal mark, which leaves a comma in a name unquoted), tab and bar;
    a comma on a tie."""
    bare = re.sub(r'"(?:[^"]|"")*"', "", header)
    return max(",;\t|", key=bare.count)


def _csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()[:2000]


def _why(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]


def _utf8(column: pa.Array) -> pa.Array:
    """A binary column as text when it holds text: all of it UTF-8, or nine in ten of its values (the rest read
    as `_windows_1252` reads such bytes); else as it is (bytes: a picture, a hash)."""
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        values = column.to_pylist()
        filled = [v for v in values if v]  # an empty value is UTF-8 whatever the column holds
        if sum(map(_is_utf8, filled)) < 0.9 * len(filled):
            return column
        return pa.array([None if v is None else v.decode("utf-8", _NOT_UTF8) for v in values], pa.string())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parquet_rows(batch: pa.RecordBatch) -> list[dict | Unreadable]:
    """A batch's rows as Python values: nanosecond times cut to microseconds (a Python datetime has no
    nanoseconds, and pyarrow refuses the whole batch), binary columns that hold UTF-8 as text (Hive, Impala and
    older Spark write strings so; read as bytes, a post's text would be "b'...'"), and a row holding a value Python cannot
    (a time past the year 9999) rejected alone."""
    columns = [c.cast(pa.timestamp("us", c.type.tz), safe=False) if pa.types.is_timestamp(c.type) and c.type.unit == "ns"
               else _utf8(c) if pa.types.is_binary(c.type) or pa.types.is_large_binary(c.type) else c
               for c in batch.columns]
    batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    try:
        return batch.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        rows: list[dict | Unreadable] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except (ValueError, OverflowError, pa.ArrowException) as exc:
                rows.append(Unreadable(f"unreadable value: {type(exc).__name__}: {exc}"[:300]))
        return rows


_BLANK = re.compile(r"[ \t\r\n]*")


def _document(path: Path, compression: str | None) -> list[tuple[int, dict | Unreadable]] | None:
    """A `.json` file of indented JSON (an array of records, one API page, or objects one after another as jq
    prints them) as (line, record) rows, a record's line the one it starts on; a file that breaks off (a cut
    download) ends with one error row after the records before the break. None when not even its first
    record reads, or when its records are one a line and one does not (then it is read a line at a time)."""
    with _open_text(path, compression) as fh:
        text = fh.read()
    decoder, rows, line, counted, indented = json.JSONDecoder(), [], 1, 0, False
    pos = _BLANK.match(text).end()
    array = text.startswith("[", pos)
    pos = _BLANK.match(text, pos + array).end()
    try:
        while not (array and text.startswith("]", pos)):
            if pos == len(text):
                if array:
                    raise json.JSONDecodeError("the file ends inside the array (cut off?)", text, pos)
                break
            item, end = decoder.raw_decode(text, pos)
            line, counted = line + text.count("\n", counted, pos), pos  # counted on from the last record: linear
            indented = indented or "\n" in text[pos:end]
            rows.append((line, item if isinstance(item, dict) else
                         Unreadable("invalid JSON: not an object", text[pos:end][:2000])))
            pos = _BLANK.match(text, end).end()
            if array and text.startswith(",", pos):
                pos = _BLANK.match(text, pos + 1).end()
            elif array and not text.startswith("]", pos) and pos < len(text):
                raise json.JSONDecodeError("',' or ']' expected", text, pos)
        if array and _BLANK.match(text, pos + 1).end() < len(text):
            raise json.JSONDecodeError("more after the array", text, _BLANK.match(text, pos + 1).end())
    except (ValueError, RecursionError) as exc:
        if not rows or not (array or indented):  # a record per line, one of them bad: a line at a time finds the rest
            return None
        rows.append((line + text.count("\n", counted, pos), Unreadable(f"unreadable file from here: {getattr(exc, 'msg', exc)}")))
    return rows


def parse_time(value: object) -> datetime:
    """A UTC datetime from ISO-8601 (`Z`, `+00:00`, `+0000`, or no offset = UTC; 8 digits are a YYYYMMDD day), a
    spreadsheet's serial day (Excel, Google Sheets: 20000 to 80000, years 1954 to 2119) or an epoch time in
    seconds, milliseconds or microseconds (a number or a numeric string; its size says which)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, str) and _EPOCH.match(value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, float) and value.is_integer() and 10**7 <= value < 10**8:
        value = int(value)  # pandas writes a column of days with a gap as floats: 20230105.0
    if isinstance(value, int) and 10**7 <= value < 10**8:  # as epoch seconds 1970-1973, before any post: a date
        return datetime.strptime(str(value), "%Y%m%d").replace(tzinfo=timezone.utc)  # in ISO-8601's basic form
    if isinstance(value, (int, float)) and _SERIAL_DAYS[0] <= value < _SERIAL_DAYS[1]:
        return _SERIAL_EPOCH + timedelta(days=value)  # as epoch seconds 1 January 1970, before any post
    if isinstance(value, (int, float)):
        magnitude = abs(value)
        per_unit = 1_000_000 if magnitude < 1e11 else 1_000 if magnitude < 1e14 else 1 if magnitude < 1e17 else None
        if per_unit is None:
            raise ValueError("epoch time out of range")
        # Whole microseconds from an int: a float of microseconds since 1970 would lose the last digit.
        micros = value * per_unit if isinstance(value, int) else round(value * per_unit)
        return _UNIX_EPOCH + timedelta(microseconds=micros)
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, date):
        ts = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        ts = datetime.fromisoformat(value.strip())
    else:
        raise ValueError("not a time")
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _strings(value: object) -> list[str]:
    """A list of non-blank strings from a string, a list, or nothing."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and item.strip() and item.strip() not in out:
            out.append(item.strip())
    return out


def _listed(value: object) -> object:
    """A CSV cell holding a list as a list: JSON (twarc-csv) or a Python list's repr (pandas writes list columns so,
    "['a', 'b']"; read as a literal, never run); any other value as it is."""
    if isinstance(value, str) and value.strip().startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                listed = parse(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(listed, list):
                return listed
    return value


def _image_urls(value: object) -> list[str]:
    """A post's image URLs from a list, or from one CSV cell of several: a list (_listed), or URLs separated by
    spaces, commas, semicolons or bars before the next http(s):// (a comma inside a URL, as in image services'
    w_100,h_80, stays; so does a space in a local path). A value that is no string (12345, {"u": 1}) is kept as its
    JSON, for the fetch stage to call invalid_url: read as no image, the post would hide it (no_image). None, False
    and NaN (pandas' empty cell) are no image."""
    value = _listed(value)
    if isinstance(value, str):
        value = _URL_SEPARATOR.split(value.strip())
    items = value if isinstance(value, (list, tuple)) else [value]
    return _strings([None if _no_value(v) else v if isinstance(v, str) else json.dumps(v, default=str) for v in items])


def _no_value(value: object) -> bool:
    return value is None or value is False or (isinstance(value, float) and math.isnan(value))


def validate(row: dict, max_images: int = DEFAULT_MAX_IMAGES, tagger: BrandTagger | None = None) -> dict:
    """Turn one flat row into a post (POST_SCHEMA fields) or raise ValueError with the reason."""
    post_id = row.get("post_id")
    if isinstance(post_id, Decimal) and post_id.is_finite() and post_id == post_id.to_integral_value():
        post_id = int(post_id)  # a warehouse export's NUMBER(38, 0)
    if post_id is None or isinstance(post_id, bool) or not str(post_id).strip():
        raise ValueError("missing post_id")
    if isinstance(post_id, float):  # 64-bit ids (X, Reddit, Mastodon) past 2^53 lose their last digits as floats
        raise ValueError(f"post_id is a floating-point number ({post_id!r}): ids must be strings or integers")
    if not isinstance(post_id, (str, int)):
        raise ValueError(f"post_id is not a string or an integer: {str(post_id)[:40]!r}")
    post = {"post_id": str(post_id).strip()}
    if row.get("created_at") in (None, ""):
        raise ValueError("missing created_at")
    try:
        post["created_at"] = parse_time(row["created_at"])
    except (ValueError, TypeError, OverflowError, OSError):
        raise ValueError(f"created_at is not ISO-8601 or an epoch time: {str(row['created_at'])[:40]!r}") from None
    if not _UNIX_EPOCH <= post["created_at"] < LATEST:
        raise ValueError(f"created_at is not between 1970 and {LATEST.year}: {post['created_at'].isoformat()}")
    for name in TEXT_FIELDS:
        value = row.get(name)
        if name == "text" and isinstance(value, (list, dict, bool)):  # a structure's repr would pass for its words
            raise ValueError(f"text is not a string: {json.dumps(value, default=str)[:40]}")
        if name == "lang" and isinstance(value, list):  # several tags (Bluesky's langs): language.post_language
            continue
        post[name] = None if value is None or (isinstance(value, str) and not value.strip()) else str(value)
    urls = _image_urls(row.get("image_urls"))
    urls += [u for u in _image_urls(row.get("image_url")) if u not in urls]
    post["image_urls"] = urls[:max_images]
    brands = _strings(_listed(row.get("brands"))) + _strings(_listed(row.get("brand")))
    if tagger is not None:
        brands = [tagger.canonical(b) for b in brands] + tagger.tag(post["text"])
    named: dict[str, str] = {}
    for b in brands:  # one per name whatever its case and accents, as first spelt
        named.setdefault(name_key(b), b)
    post["brands"] = list(named.values())
    tags = row.get("lang") if isinstance(row.get("lang"), list) else post["lang"]
    post["lang"] = language.post_language(tags, lambda: _without_brands(post["text"], post["brands"], tagger))
    for name in COUNT_FIELDS:
        try:
            post[name] = count(row.get(name))
        except (ValueError, TypeError):
            raise ValueError(f"{name} is not a count (a whole number from 0 to 10^15): "
                             f"{str(row.get(name))[:40]!r}") from None
    if post["text"] is None and not post["image_urls"]:
        raise ValueError("nothing to score: no text and no image")
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS and v is not None}
    if len(urls) > max_images:
        extra["images_dropped"] = len(urls) - max_images
    post["extra"] = json.dumps(extra, default=str, ensure_ascii=False) if extra else None
    for name, value in post.items():  # lone surrogates cannot be stored (UTF-8): each becomes U+FFFD
        if isinstance(value, str) and _SURROGATE.search(value):
            post[name] = _SURROGATE.sub("\ufffd", value)
        elif isinstance(value, list) and any(_SURROGATE.search(v) for v in value):
            post[name] = [_SURROGATE.sub("\ufffd", v) for v in value]
    return post


def _without_brands(text: str | None, brands: list[str], tagger: BrandTagger | None) -> str | None:
    """The text with the brand names it holds blanked out: a name is no evidence of a language ("hello acme"
    reads as Italian), and a short post of a word or two and a brand would be stored unscored in the wrong one."""
    if not text or not brands:
        return text
    chars = list(text)
    for brand in brands:
        for a, b in spans(text, brand, tagger):
            chars[a:b] = " " * (b - a)
    return "".join(chars)


@dataclass
class Shard:
    """A run's unit of work: consecutive accepted posts, plus the records rejected or skipped on the way."""

    index: int
    posts: pa.Table
    rejected: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # records that are not posts, by reason


def iter_shards(paths: Path | list[Path], shard_size: int, dump_name: str | None = None,
                options: ReadOptions | None = None) -> Iterator[Shard]:
    """Stream a local dump (one file or several, read as one) as validated shards. Every input record
    lands in exactly one shard: as posts, as a rejected row, or counted as skipped (duplicates of an
    earlier post_id, also from another file, are rejected; a repost of a post already read, or a post already
    read through a repost, is the same post: skipped). A shard is cut at `shard_size` posts or REJECTED_PER_SHARD
    rejections, so a dump read the wrong way (every record rejected) streams too."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    options = options or ReadOptions()
    files = [paths] if isinstance(paths, Path) else list(paths)
    # A file's own name tells its format; dump_name only for a single file whose name cannot (a temporary copy).
    names = [str(f) if _readable(f.name) or not dump_name or len(files) > 1 else dump_name for f in files]
    for name in names:
        file_kind(name)  # an unreadable name fails before anything is read
    read = options.reader()
    tagger = BrandTagger(options.brand_rules) if options.brand_rules else None
    seen: dict[str, int] = {}  # post_id -> file number << 40 | line (an int: the dict's only per-post memory)
    reposted: set[str] = set()  # post_ids read through a repost (a boost, a retweet): met again, the same post
    posts: list[dict] = []
    rejected: list[dict] = []
    skipped: Counter = Counter()
    index = 0
    for number, (path, name) in enumerate(zip(files, names)):
        where = path.name if len(files) > 1 else None
        for line, record in _raw_rows(path, name):
            if isinstance(record, CsvHeader):
                if not _names_post_id(options, record.names):  # the file's first line is then a post of its own
                    rejected.append({"post_id": None, "raw": _SURROGATE.sub("\ufffd", record.raw), "line": line,
                                     "file": where, "reason": "CSV header has no post_id column: a file without a "
                                     "header row has its first post here (add the header, or --map post_id=COLUMN)"})
                continue
            for item in _read(read, record):
                if isinstance(item, Skip):
                    skipped[item.reason] += 1
                    continue
                try:
                    if isinstance(item, str):
                        raise ValueError(item)
                    post = validate(item, options.max_images, tagger)
                    repost = item.get("reposted_by") is not None
                    if post["post_id"] in seen and (repost or post["post_id"] in reposted):
                        skipped["repost of a post already read"] += 1
                        continue
                    if repost:
                        reposted.add(post["post_id"])
                    if post["post_id"] in seen:
                        first_file, first_line = divmod(seen[post["post_id"]], 1 << 40)
                        at = f"{files[first_file].name} line {first_line}" if len(files) > 1 else f"row {first_line}"
                        raise ValueError(f"duplicate post_id (first seen at {at})")
                except ValueError as exc:
                    raw = (record.raw if isinstance(record, Unreadable) else
                           json.dumps(record if isinstance(item, str) else item, default=str, ensure_ascii=False))
                    pid = item.get("post_id") if isinstance(item, dict) else None
                    rejected.append({"post_id": None if pid is None else _SURROGATE.sub("\ufffd", str(pid)),
                                     "reason": _SURROGATE.sub("\ufffd", str(exc)),
                                     "raw": _SURROGATE.sub("\ufffd", raw[:2000]), "line": line, "file": where})
                    continue
                seen[post["post_id"]] = number << 40 | line
                posts.append(post)
                if len(posts) == shard_size:
                    yield Shard(index, pa.Table.from_pylist(posts, schema=POST_SCHEMA), rejected, skipped)
                    index, posts, rejected, skipped = index + 1, [], [], Counter()
            if len(rejected) >= REJECTED_PER_SHARD:
                yield Shard(index, pa.Table.from_pylist(posts, schema=POST_SCHEMA), rejected, skipped)
                index, posts, rejected, skipped = index + 1, [], [], Counter()
    if posts or rejected or skipped or index == 0:
        yield Shard(index, pa.Table.from_pylist(posts, schema=POST_SCHEMA), rejected, skipped)


def _names_post_id(options: ReadOptions, names: list[str]) -> bool:
    """Whether rows under these column names can give a post_id: a mapping's post_id column, the flat contract's
    own, or a platform's fields its reader makes one of (a CSV of Reddit submissions: `id`)."""
    if "post_id" in options.mapping:
        steps = parse_mapping(options.mapping)["post_id"]
        return str(steps[0]) in names or ".".join(map(str, steps)) in names  # a column named by the path (flat.mapped)
    if options.source_format in (None, "flat"):
        return "post_id" in names or (options.source_format is None and readers.detect(dict.fromkeys(names)) != "flat")
    return True


def _read(read, record: dict | Unreadable | Skip) -> Iterator[dict | Skip | str]:
    """The reader's rows for a record; an unreadable record is one error text (its rejection reason)."""
    if isinstance(record, Unreadable):
        yield record.reason
        return
    if isinstance(record, Skip):
        yield record
        return
    try:
        yield from list(read(record))
    except ValueError as exc:  # the reader's own words
        yield str(exc)
    except (TypeError, AttributeError, KeyError, OverflowError) as exc:  # a field of an unexpected type, shape or size
        yield f"unparseable record: {type(exc).__name__}: {exc}"
