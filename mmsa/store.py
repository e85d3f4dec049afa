"""Write scored posts: hive-partitioned Parquet files (atomically) and the DuckDB tables/views.

The DuckDB table `scored_posts` is keyed by (post_id, model_version) and loaded with
INSERT OR REPLACE, so loading the same results twice never duplicates a row.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmsa import files, publish, storage
from mmsa.faults import PermanentError
from mmsa.schema import LABELS, REJECTED_SCHEMA, SCORED_SCHEMA

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"{_duck_type(t.value_type)}[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {_duck_type(f.type)}" for f in t) + ")"
    return _DUCK_TYPES[t]


def _columns(schema: pa.Schema) -> str:
    return ",\n  ".join(f"{f.name} {_duck_type(f.type)}" for f in schema)


DDL = f"""
SET TimeZone = 'UTC';
CREATE TABLE IF NOT EXISTS scored_posts (
  {_columns(SCORED_SCHEMA)},
  PRIMARY KEY (post_id, model_version)
);
CREATE TABLE IF NOT EXISTS rejected_posts (
  {_columns(REJECTED_SCHEMA)}
);
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY,
  dump VARCHAR,
  model_version VARCHAR,
  started_at TIMESTAMPTZ,
  finished_at TIMESTAMPTZ,
  posts_in BIGINT,
  posts_scored BIGINT,
  posts_rejected BIGINT,
  image_status JSON,
  stage_seconds JSON
);
CREATE TABLE IF NOT EXISTS run_shards (
  run_id VARCHAR, shard INTEGER, skipped BOOLEAN, posts BIGINT, image_status JSON, stage_seconds JSON,
  posts_per_s DOUBLE, PRIMARY KEY (run_id, shard)
);
-- What reports need to know of each model: its quantification statistics (mmsa.quantify.quantification_stats,
-- from its config.json; NULL when it has none), written by each run that scores with it.
CREATE TABLE IF NOT EXISTS models (model_version VARCHAR PRIMARY KEY, quantification JSON);
-- The Parquet files (within OUT) a load has taken, with the run that wrote them (a rerun with --force writes a
-- file again under its name): a rerun loads only the files of the shards it scores and those no load has taken
-- yet (a run stopped before its load), so it changes nothing already loaded.
CREATE TABLE IF NOT EXISTS loaded_files (file VARCHAR PRIMARY KEY, scored_by VARCHAR);
-- Columns added since a database was created (a no-op on a new one).
ALTER TABLE rejected_posts ADD COLUMN IF NOT EXISTS file VARCHAR;
ALTER TABLE rejected_posts ADD COLUMN IF NOT EXISTS dump_key VARCHAR;
ALTER TABLE rejected_posts ADD COLUMN IF NOT EXISTS dump_head VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS not_posts JSON;  -- records that were not posts, by reason
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cache_repaired BIGINT;  -- damaged image cache entries fetched anew
ALTER TABLE runs ADD COLUMN IF NOT EXISTS not_covered JSON;  -- posts stored unscored, by language
ALTER TABLE runs ADD COLUMN IF NOT EXISTS dump_key VARCHAR;  -- the dump's bytes (mmsa.source.files_key)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS reading_key VARCHAR;  -- how it was read (mmsa.source.reading_key)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS posts_unscored BIGINT;  -- of posts_scored (the posts stored), those unlabelled
ALTER TABLE scored_posts ADD COLUMN IF NOT EXISTS unscored_reason VARCHAR;
ALTER TABLE scored_posts ADD COLUMN IF NOT EXISTS brand_scores {_duck_type(SCORED_SCHEMA.field("brand_scores").type)};
-- One row per post and brand: a post that mentions two brands counts once for each, with the sentiment
-- toward that brand (brand_label, brand_p_*; the two lists are zipped by position), an untagged post once
-- with brand NULL and its own label as brand_label (so do rows written before brand_scores existed). day = the post's UTC date whatever the reader's TimeZone setting
-- (and cheaper than a cast).
CREATE OR REPLACE VIEW post_sentiment AS
  SELECT * EXCLUDE (bs, day), CASE WHEN bs IS NULL THEN label ELSE bs.brand_label END AS brand_label,
         {", ".join(f"CASE WHEN bs IS NULL THEN p_{x} ELSE bs.brand_p_{x} END AS brand_p_{x}" for x in LABELS)}, day
  FROM (
    SELECT * EXCLUDE (brands, images, brand_scores),
           unnest(CASE WHEN coalesce(len(brands), 0) = 0 THEN [NULL::VARCHAR] ELSE brands END) AS brand,
           unnest(CASE WHEN coalesce(len(brand_scores), 0) = 0 THEN [NULL] ELSE brand_scores END) AS bs,
           DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER) AS day
    FROM scored_posts
  );
-- The model version that scored most recently: what every report reads when it is given none
-- (sql/reports: `coalesce($model_version, (SELECT model_version FROM latest_model_version))`), one rule in one place.
CREATE OR REPLACE VIEW latest_model_version AS
  SELECT arg_max(model_version, scored_at) AS model_version FROM scored_posts;
-- One row per image of a post (none for a post without images).
CREATE OR REPLACE VIEW post_images AS
  SELECT post_id, model_version, run_id, created_at,
         DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER) AS day,
         unnest(images, recursive := true)
  FROM scored_posts;
"""


class RunLocked(ValueError):
    """Another run holds the database; a ValueError so the CLI reports it as an error, not a crash."""


_IN_TRANSACTION: set[int] = set()  # ids of the connections a `transaction` block holds open


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection):
    """One transaction around the block, or the caller's when it opened one (a run's whole load commits at once),
    rolled back if the block fails. (A second BEGIN would abort the open transaction, so it is not tried.)"""
    if id(con) in _IN_TRANSACTION:
        yield
        return
    con.execute("BEGIN")
    _IN_TRANSACTION.add(id(con))
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        _IN_TRANSACTION.discard(id(con))
    con.execute("COMMIT")


_HELD: set[Path] = set()  # the lock files this process holds: a backfill holds its database across its days' runs


@contextlib.contextmanager
def run_lock(db: str):
    """Hold an exclusive, non-blocking lock on `<db>.lock` for a whole run (or backfill; the runs it starts
    hold it through it).

    The kernel drops the lock when the holder dies (even by SIGKILL), so a crashed run never
    blocks its rerun; a concurrent run is refused before it touches anything."""
    shown = Path(f"{db}.lock")
    path = shown.resolve()
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another mmsa run holds {db} (lock file {shown}); wait for it or stop it") from None
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)
            fcntl.flock(fh, fcntl.LOCK_UN)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def write_atomic(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file so that readers and crashes only ever see a whole file (local, or on object
    storage: mmsa.storage)."""
    if storage.is_remote(path):
        storage.write_table(table, path)
        return path
    with files.atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _file_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def write_partitions(table: pa.Table, out: Path, stem: str) -> list[Path]:
    """Split scored rows by the post's UTC date into out/date=YYYY-MM-DD/STEM.parquet.

    File names are deterministic for a given dump shard and model, so a rerun replaces
    its own files instead of adding copies."""
    stem = _file_stem(stem)
    days = pc.strftime(table["created_at"], format="%Y-%m-%d")
    written = []
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pc.equal(days, day))
        written.append(write_atomic(part, out / f"date={day}" / f"{stem}.parquet"))
    return written


def prune_partitions(con: duckdb.DuckDBPyConnection, out, stored: list[str], model_version: str) -> int:
    """Take out of the model's other Parquet files the rows of the posts that `stored` (files within `out` a run is
    storing) hold, in the partitions of `stored` and in those of the days the database has them on (a post a later
    dump dates otherwise): of a post in two dumps the one stored last stays, so that `out` holds one row per post and
    model, as the database does. A file left without rows stays, empty (a missing file would have its shard scored
    again). Returns the rows taken out."""
    out, mine = storage.path(out), set(stored)
    posts = pa.array(sorted({p for f in stored for p in storage.read_table(out / f, columns=["post_id"])["post_id"].to_pylist()}),
                     pa.string())
    parts = {f.split("/")[0] for f in stored}
    con.register("pruned_posts", pa.table({"post_id": posts}))
    try:
        parts.update(f"date={day}" for (day,) in con.execute(
            "SELECT DISTINCT strftime(DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER), '%Y-%m-%d') "
            "FROM scored_posts JOIN pruned_posts USING (post_id) WHERE model_version = $mv", {"mv": model_version}).fetchall())
    finally:
        con.unregister("pruned_posts")
    removed = 0
    for part in sorted(parts):
        for other in sorted((out / part).glob(f"{_file_stem(model_version)}-*.parquet")):
            if f"{part}/{other.name}" in mine:
                continue
            if pc.all(_kept(storage.read_table(other, columns=["post_id", "model_version"]), posts, model_version)).as_py() \
                    is not False:
                continue  # read whole only when it holds one of them
            table = storage.read_table(other)
            keep = _kept(table, posts, model_version)
            write_atomic(table.filter(keep), other)
            removed += table.num_rows - pc.sum(keep).as_py()
    return removed


def _kept(table: pa.Table, posts: pa.Array, model_version: str) -> pa.ChunkedArray:
    """Per row, whether it is not a row of `posts` by `model_version`."""
    return pc.invert(pc.and_(pc.is_in(table["post_id"], posts), pc.equal(table["model_version"], model_version)))


# (column, type) added to `runs` since databases were first written: a read-only reader of an older one
# (mmsa.report.connect) sees them as NULL.
RUNS_ADDED = re.findall(r"ALTER TABLE runs ADD COLUMN IF NOT EXISTS (\w+) (\w+);", DDL)


def connect(db: str | Path) -> duckdb.DuckDBPyConnection:
    """Open the pipeline's database read-write, creating the schema if needed.

    A new database is built under a temporary name and renamed into place once its schema is
    written: DuckDB creates the file before it writes the header, and a run killed in between
    would leave a file that no later run or reader can open. Callers hold run_lock,
    so a killed run's leftover belongs to a dead process and is swept here."""
    db = Path(db)
    if not db.exists():
        files.sweep_stale(db.parent)
        with files.atomic_path(db) as tmp, duckdb.connect(str(tmp)) as con:
            con.execute(DDL)
    con = _open(db)
    _migrate_scored_posts(con)
    con.execute(DDL)
    return con


# DuckDB's word for a database file another process holds (one process may write it, or many read it).
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _open(db: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """duckdb.connect; a file that another process holds is a PermanentError naming that process."""
    try:
        return duckdb.connect(str(db), read_only=read_only)
    except duckdb.IOException as exc:
        holder = _LOCK_HOLDER.search(str(exc))
        if holder is None:
            raise
        raise PermanentError(
            f"{db} is locked by PID {holder['pid']} ({Path(holder['program']).name}): close that session or point "
            f"analysts at the snapshot {publish.snapshot_path(db)}") from exc


def _migrate_scored_posts(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a scored_posts table of one image and one brand per post (image_url, brand) to the lists
    (image_urls, brands, images), in one transaction; a current table is left alone."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'scored_posts'").fetchall()}
    if not cols or "brands" in cols:
        return
    image = ", ".join(f"{c}: {c}" for c in ("image_url", "image_status", "image_label", "image_p_positive",
                                            "image_p_neutral", "image_p_negative"))
    converted = {
        "image_urls": "CASE WHEN image_url IS NULL THEN [] ELSE [image_url] END",
        "brands": "CASE WHEN brand IS NULL THEN [] ELSE [brand] END",
        "images": f"CASE WHEN image_url IS NULL THEN [] ELSE [{{position: 0, {image}}}] END",
        "unscored_reason": "NULL",  # every post was scored then
        "brand_scores": "[]",
    }
    select = ", ".join(converted.get(name, name) for name in SCORED_SCHEMA.names)
    with transaction(con):
        con.execute("DROP VIEW IF EXISTS post_sentiment")
        con.execute("ALTER TABLE scored_posts RENAME TO scored_posts_v1")
        con.execute(DDL.split("CREATE TABLE IF NOT EXISTS rejected_posts")[0])
        con.execute(f"INSERT INTO scored_posts SELECT {select} FROM scored_posts_v1")
        con.execute("DROP TABLE scored_posts_v1")


def load_scored(con: duckdb.DuckDBPyConnection, files: Iterable[Path]) -> int:
    """Upsert scored rows from Parquet files (local, or on object storage); returns the number of rows loaded."""
    files = list(files)
    if any(storage.is_remote(f) for f in files):
        return _load_scored_remote(con, files)
    files = [str(f) for f in files]
    if not files:
        return 0
    cols = ", ".join(SCORED_SCHEMA.names)
    with transaction(con):
        con.execute(
            f"INSERT OR REPLACE INTO scored_posts ({cols}) "
            f"SELECT {cols} FROM read_parquet($files, hive_partitioning = false)",
            {"files": files},
        )
        (n,) = con.execute("SELECT count(*) FROM read_parquet($files, hive_partitioning = false)",
                           {"files": files}).fetchone()
    return n


def not_loaded(con: duckdb.DuckDBPyConnection, files: dict[str, str | None]) -> set[str]:
    """Of these files (named within OUT: the run that wrote them), those whose rows no load has taken: not
    recorded as loaded from that run (`loaded_files`), and that run neither recorded (a run's record commits
    with its load) nor found in `scored_posts` (a later run loaded it before `loaded_files` existed)."""
    if not files:
        return set()
    recorded = dict(con.execute("SELECT file, scored_by FROM loaded_files WHERE list_contains($f, file)",
                                {"f": list(files)}).fetchall())
    left = {f: by for f, by in files.items() if recorded.get(f) != by}
    pending = sorted({by for by in left.values() if by is not None})
    for table in ("runs", "scored_posts"):
        if pending:
            found = {r for (r,) in con.execute(f"SELECT DISTINCT run_id FROM {table} WHERE list_contains($runs, run_id)",
                                               {"runs": pending}).fetchall()}
            pending = [r for r in pending if r not in found]
    return {f for f, by in left.items() if by is None or by in pending}


def mark_loaded(con: duckdb.DuckDBPyConnection, files: dict[str, str | None]) -> None:
    """Record these files (named within OUT: the run that wrote them) as loaded, in the caller's transaction."""
    if files:
        con.execute("INSERT OR REPLACE INTO loaded_files SELECT unnest($f), unnest($by)",
                    {"f": list(files), "by": list(files.values())})


def _load_scored_remote(con: duckdb.DuckDBPyConnection, paths: list) -> int:
    """load_scored for files in a bucket: DuckDB's own S3 reader (httpfs) is an extension it downloads on first
    use, so each file is read through fsspec (mmsa.storage) into Arrow and upserted from there, in one
    transaction, one file in memory at a time."""
    cols = ", ".join(SCORED_SCHEMA.names)
    n = 0
    with transaction(con):
        for path in paths:
            table = storage.read_table(path, columns=SCORED_SCHEMA.names)
            con.register("scored_file", table)
            con.execute(f"INSERT OR REPLACE INTO scored_posts ({cols}) SELECT {cols} FROM scored_file")
            con.unregister("scored_file")
            n += table.num_rows
    return n


def load_rejected(con: duckdb.DuckDBPyConnection, batches: Iterable[list[dict]], dump: str, dump_key: str,
                  dump_head: str, run_id: str) -> int:
    """Record rejected rows, given in batches (a shard's each). A rerun replaces the earlier rejections of the records it reads again: of the same
    bytes (`dump_key`) by whatever path, or of the same path whose file starts with the same post (`dump_head`:
    a dump still being written, whose half line rejected then is read whole now, or one mended further on), or
    whose file then held no post and fewer than three rejected records (head "": its only line half-written, or
    the file damaged, now mended); a new dump at an old path (a nightly `today.jsonl`, other posts, or last night's of
    rejected records only) keeps the old ones."""
    with transaction(con):
        con.execute("DELETE FROM rejected_posts WHERE dump_key = $key "  # NULL: rows from before the keys
                    "OR dump = $dump AND (dump_head = $head OR dump_head = '' OR dump_head IS NULL)",
                    {"key": dump_key, "dump": dump, "head": dump_head})
        at, count = now_utc(), 0
        for rows in batches:
            table = pa.Table.from_pylist(
                [{**r, "dump": dump, "dump_key": dump_key, "dump_head": dump_head, "run_id": run_id, "rejected_at": at}
                 for r in rows],
                schema=REJECTED_SCHEMA,
            )
            con.register("new_rejected", table)
            con.execute("INSERT INTO rejected_posts BY NAME SELECT * FROM new_rejected")
            con.unregister("new_rejected")
            count += len(rows)
    return count


def record_run(con: duckdb.DuckDBPyConnection, stats: dict, shards: Iterable[dict] = ()) -> None:
    """Store one run's statistics (JSON columns hold the status mix and per-stage seconds) and its shards'
    (table run_shards, one row per run and shard), in one transaction: they appear whole."""
    with transaction(con):
        for sh in shards:
            row = {**sh, "image_status": json.dumps(sh["image_status"]), "stage_seconds": json.dumps(sh["stage_seconds"])}
            con.execute("INSERT OR REPLACE INTO run_shards VALUES ($run_id, $shard, $skipped, $posts, $image_status, "
                        "$stage_seconds, $posts_per_s)", row)
        row = dict(stats)
        row["image_status"] = json.dumps(row["image_status"])
        row["stage_seconds"] = json.dumps(row["stage_seconds"])
        for key in ("not_posts", "not_covered"):
            if key in row:
                row[key] = json.dumps(row[key])
        cols = ", ".join(row)
        params = ", ".join(f"${k}" for k in row)
        con.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({params})", row)


def record_model(con: duckdb.DuckDBPyConnection, model_version: str, quantification: dict | None) -> None:
    """Store what reports need to know of the model a run scored with (its config.json's "quantification")."""
    con.execute("INSERT OR REPLACE INTO models VALUES ($v, $q)",
                {"v": model_version, "q": None if quantification is None else json.dumps(quantification)})


def already_scored(db: str | Path, dump: str, model_version: str, dump_key: str | None = None,
                   reading_key: str | None = None) -> bool:
    """True when table `runs` of `db` holds a finished run of `dump` by `model_version`; given `dump_key` (the
    bytes of a local dump: mmsa.source.files_key), a run of those bytes, so that a day's dump replaced since, by a
    later or a whole file, is scored again; given `reading_key` (mmsa.source.reading_key), a run that read it the
    same way, so that a brand added since is scored (a run recorded before runs kept a key passes either)."""
    if not Path(db).exists():
        return False
    with run_lock(str(db)), _open(Path(db), read_only=True) as con:
        columns = {c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'").fetchall()}
        if not columns:
            return False
        keys = {name: value for name, value in (("dump_key", dump_key), ("reading_key", reading_key))
                if value and name in columns}
        same = "".join(f" AND ({name} IS NULL OR {name} = ${name})" for name in keys)
        (n,) = con.execute(
            f"SELECT count(*) FROM runs WHERE dump = $dump AND model_version = $mv AND finished_at IS NOT NULL{same}",
            {"dump": dump, "mv": model_version} | keys,
        ).fetchone()
    return n > 0
