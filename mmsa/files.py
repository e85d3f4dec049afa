"""Files that readers and crashes only ever see whole, and the sweep of what a killed writer left.

Every write of the project goes through `atomic_path`: the data goes to a temporary file beside the
target, `.NAME.PID-SEQ.tmp` (PID: the writing process; SEQ: a per-process counter, so two threads
writing the same target never share one), which is then renamed onto the target. The rename is atomic
within one file system, so a reader opens the old file or the new one, whole. `sweep_stale` removes the
temporary files whose writer is dead, which only that naming makes possible.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import itertools
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mmsa import faults

_SEQ = itertools.count()
# The temporary name of a target and anything a writer adds to it (DuckDB's `.wal`).
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-\d+\.tmp(\..*)?$")


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path` (same folder: same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_SEQ)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without an error it replaces `path`,
    else it is removed. `durable`: fsync the file and the rename too (a published snapshot). A full disk, a
    folder without write access or a read-only filesystem raises mmsa.faults.PermanentError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            yield tmp
            if durable:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:  # pyarrow's write errors name no file: the target is what the user must know
        permanent = faults.as_permanent(exc, path)
        if permanent is None:
            raise
        raise permanent from exc


@contextlib.contextmanager
def scratch(near: Path | None) -> Iterator[Path]:
    """A folder of this process's own (mode 0700) for files needed only while a command reads them (a downloaded
    dump), removed after: in `near` when the output is local (a large dump stays on its disk), else a fresh one in
    the system's temporary folder. A killed run's folder in `near` is swept by a later run once a day old: its
    process is dead here, and a day is longer than any dump takes to cut (a process of another host or container
    sharing the folder has a pid this one cannot see)."""
    import tempfile

    if near is None:
        folder = Path(tempfile.mkdtemp(prefix="mmsa-scratch-"))
    else:
        near.mkdir(parents=True, exist_ok=True)
        sweep_stale(near, min_age=86400)
        folder = temp_path(near / "scratch")
        folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy(src: str | os.PathLike, dest: str | os.PathLike, durable: bool = False) -> Path:
    with atomic_path(dest, durable=durable) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def package_dir(package: str) -> Path:
    """The folder of one of the data packages (mmsa.sql, mmsa.deployments), found by importlib.resources
    in the installed package as in a checkout (a wheel installs unzipped, so it is a folder)."""
    return Path(str(importlib.resources.files(package)))


def default_cache_dir() -> Path:
    """$MMSA_CACHE, else ~/.cache/mmsa: exported ONNX graphs (onnx/) and training features (features/)."""
    return Path(os.environ.get("MMSA_CACHE") or Path.home() / ".cache" / "mmsa")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale(*folders: str | os.PathLike, min_age: float = 0) -> int:
    """Delete the temporary files (`atomic_path`'s) and folders (`temp_path`'s, built whole before a rename:
    mmsa.packaged) in `folders` whose writing process is dead, and at least `min_age` seconds old; returns how
    many. A live writer's stays: it may be about to be renamed."""
    removed = 0
    for folder in folders:
        for tmp in Path(folder).glob(".*.tmp*"):
            match = _TEMP.match(tmp.name)
            if match and not _alive(int(match["pid"])) and (not min_age or time.time() - tmp.stat().st_mtime >= min_age):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                removed += 1
    return removed
