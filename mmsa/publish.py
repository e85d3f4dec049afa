"""Publish a read-only snapshot of the pipeline's DuckDB database for analysts.

DuckDB lets one process open a database file read-write OR any number of processes open it
read-only, never both at once: an analyst's read-only connection on the pipeline's database
would make the next scoring run fail to open it. So that database stays private to the
pipeline, and at the end of each run the pipeline publishes a copy beside it,
`<stem>.analyst.duckdb`, which analysts open read-only (docs/analysts.md):

1. open the pipeline database read-write (or use the caller's open connection) and CHECKPOINT,
   so the file itself holds every committed change;
2. copy the file to a temporary name in the same folder while that connection is held, so no
   writer can change it mid-copy, and fsync the copy;
3. os.replace() the copy onto the snapshot name. The rename is atomic: a new connection opens
   either the old or the new snapshot, whole. A connection already open keeps reading the
   old file (its open descriptor keeps the replaced inode alive on Linux) until it reconnects.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from mmsa import files


def snapshot_path(db_path: str | Path) -> Path:
    """Where the analysts' snapshot of `db_path` lives: <stem>.analyst.duckdb beside it."""
    db_path = Path(db_path)
    return db_path.with_name(f"{db_path.stem}.analyst.duckdb")


def publish_snapshot(db_path: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> Path:
    """Atomically replace the analysts' snapshot of `db_path` with its current state.

    `con` is the pipeline's open read-write connection to `db_path`, if it still holds one
    (DuckDB refuses a second connection with other settings in the same process)."""
    db_path = Path(db_path)
    dest = snapshot_path(db_path)
    files.sweep_stale(dest.parent)  # a copy a killed run left half-written (callers hold the run lock)
    own = con is None
    if own:
        con = duckdb.connect(str(db_path))
    try:
        con.execute("CHECKPOINT")
        files.copy(db_path, dest, durable=True)  # copied while the connection is held: no writer mid-copy
    finally:
        if own:
            con.close()
    return dest


def publish_if_behind(db_path: str | Path) -> Path | None:
    """Publish the snapshot if it lacks runs the database has: a run killed while publishing had committed its
    load, so a backfill rerun skips its day as done and would never publish it. None when it is current."""
    dest = snapshot_path(db_path)
    if not Path(db_path).exists() or dest.exists() and _runs(dest) == _runs(Path(db_path)):
        return None
    return publish_snapshot(db_path)


def _runs(db: Path) -> tuple | None:
    """(runs, the last one's end) of a database; None for a file that is not one (a damaged snapshot)."""
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("SELECT count(*), max(finished_at) FROM runs").fetchone()
    except duckdb.Error:
        return None
