"""Failures that no retry can fix, told in one line: the path or service, the cause, and what to do; and those a
retry may fix, told in one line once the retries are spent.

A full disk, a folder without write access, a read-only filesystem, a database another process holds, an
unreachable Prefect API, a damaged model folder: retrying only delays the error and buries it under tracebacks.
Where such a fault happens it becomes (or already is) a `PermanentError` whose message is the line the user
reads; the flows do not retry it (`is_permanent`) and `mmsa.cli` prints it alone, the traceback only with
`--debug`. A plain exception with one message, so it crosses a Dask worker's pickling unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class Told(Exception):
    """A failure whose str() is the one line the user reads (mmsa.cli prints it alone, and keeps Prefect's
    tracebacks of it off the console)."""


class PermanentError(Told):
    """A failure that a retry cannot fix; str() is the one line for the user."""


class TransientError(Told):
    """A failure a retry may fix (a dump's download cut off): the flows retry it; str() is the one line the user
    reads when the retries are spent."""


def told(exc: BaseException) -> Exception | None:
    """The failure whose str() is the user's one line (a permanent one, a transient one whose retries are spent,
    any other Told), or None for one that is not (its traceback is the report)."""
    return as_permanent(exc) or (exc if isinstance(exc, Told) else None)


# errno -> (what happened, what to do) for OS errors no retry fixes.
_OS_FAULTS = {
    errno.ENOSPC: ("no space left", "free space and run the same command again"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and run the same command again"),
    errno.EROFS: ("read-only filesystem", "mount it writable or choose another folder, and run again"),
    errno.EACCES: ("permission denied", "give this user access to it, or choose another path, and run again"),
    errno.EPERM: ("operation not permitted", "give this user access to it, or choose another path, and run again"),
    errno.ENOTDIR: ("a file where a folder is wanted", "choose another path, and run again"),
    errno.EEXIST: ("something is in the way", "move it or choose another path, and run again"),
    errno.EISDIR: ("a folder where a file is wanted", "choose another path, and run again"),
}
# The texts libraries that wrap a system error keep (DuckDB's IOException, TransactionException).
_OS_TEXTS = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EISDIR, errno.ENOTDIR)}


def as_permanent(exc: BaseException, path: str | os.PathLike | None = None) -> PermanentError | None:
    """`exc` as a PermanentError if no retry can fix it, else None. `path`: the file being written or read (default:
    the exception's own file name; pyarrow's and DuckDB's errors carry none)."""
    if isinstance(exc, PermanentError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _OS_FAULTS:
        code = next((c for text, c in _OS_TEXTS.items() if text in str(exc)), None)
    if code is None:
        return None
    where = path or (exc.filename if isinstance(exc, OSError) else None)
    what, todo = _OS_FAULTS[code]
    if where is None:
        return PermanentError(f"{what} ({exc}): {todo}")
    if code in (errno.ENOSPC, errno.EDQUOT):
        mount, free = _free_space(Path(where))
        return PermanentError(f"{what} on {mount} ({_size(free)} free) writing {where}: {todo}")
    return PermanentError(f"{what}: {where}: {todo}")


def is_permanent(exc: BaseException) -> bool:
    return as_permanent(exc) is not None


def names_permanent(text: str) -> bool:
    """Whether a message names a system error no retry fixes (a failed state's line: only its text is left)."""
    return any(os.strerror(code) in text for code in _OS_FAULTS)


def _free_space(path: Path) -> tuple[Path, int]:
    """(the mount point holding `path`, bytes free there)."""
    folder = path.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    mount = folder
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return mount, shutil.disk_usage(folder).free


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} bytes"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"
