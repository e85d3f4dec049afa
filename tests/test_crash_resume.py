"""Crash safety: a `mmsa score` process SIGKILLed at several points of a multi-shard run is
finished by a rerun that scores only the missing shards, and leaves every post exactly once.
Concurrent runs against one DuckDB file are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from mmsa import cli, files, pipeline
from mmsa.flows import score  # noqa: F401  (Prefect sets its console logging up on import: here, not in a capsys test)

N_POSTS, SHARD = 60, 10
SHARDS = N_POSTS // SHARD


def write_dump(path: Path) -> Path:
    texts = ["love it, great day", "store opens at 9", "awful, broken again"]
    rows = [{"post_id": f"p{i:03d}", "created_at": f"2026-11-0{1 + i % 3}T10:{i % 60:02d}:00", "text": f"{texts[i % 3]} #{i}"}
            for i in range(N_POSTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Run:
    """One `mmsa score` subprocess in its own process group (so a kill takes its children too)."""

    def __init__(self, dump, db, out, env):
        self.db, self.out = db, out
        cmd = [sys.executable, "-m", "mmsa.cli", "score", str(dump), "--db", str(db), "--out", str(out),
               "--shard-size", str(SHARD), "--quiet"]
        self.log = open(out.parent / "score.log", "a")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def markers(self) -> int:
        return len(list(self.out.glob("_work/*/done/*/shard-*.json")))

    def kill_when(self, ready, timeout=180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.002)
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL

    def finish(self, timeout=180) -> str:
        assert self.proc.wait(timeout) == 0, (self.out.parent / "score.log").read_text()[-3000:]
        self.log.close()
        return (self.out.parent / "score.log").read_text()


def assert_consistent(db: Path, out: Path) -> None:
    """What readers see after any kill: an openable DuckDB, whole Parquet files, no duplicates."""
    if db.exists():
        with duckdb.connect(str(db)) as con:  # the file only appears with its schema in place
            n, distinct = con.execute("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchone()
            assert n == distinct and n in (0, N_POSTS)
    files = sorted(out.glob("date=*/*.parquet"))
    if files:
        n, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT post_id) FROM read_parquet('{out}/date=*/*.parquet')").fetchall()[0]
        assert n == distinct


def crash_and_resume(tmp_path: Path, api_url: str | None) -> None:
    """api_url None: each process starts its own ephemeral Prefect server, as `mmsa score` does by default."""
    dump, db, out = write_dump(tmp_path / "dump.jsonl"), tmp_path / "m.duckdb", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
               **({"PREFECT_API_URL": api_url} if api_url else {}))

    run = Run(dump, db, out, env)  # 1: killed right after the first shard's done marker
    run.kill_when(lambda: run.markers() >= 1)
    assert_consistent(db, out)
    done_before = run.markers()
    assert 1 <= done_before < SHARDS and not db.exists()

    run = Run(dump, db, out, env)  # 2: killed mid-way, after the rerun has added shards of its own
    run.kill_when(lambda: run.markers() >= max(done_before + 1, SHARDS // 2))
    assert_consistent(db, out)
    done_mid = run.markers()
    assert done_before < done_mid < SHARDS

    run = Run(dump, db, out, env)  # 3: killed during the DuckDB load (the file appears as it starts)
    run.kill_when(db.exists)
    assert_consistent(db, out)
    assert run.markers() == SHARDS

    log = Run(dump, db, out, env).finish()  # 4: runs to the end
    assert f"{N_POSTS} scored" in log and f"(0 shards scored, {SHARDS} already done)" in log
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchone() == (N_POSTS, N_POSTS)
        last = "(SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1)"
        assert con.execute(f"SELECT posts_scored FROM runs WHERE run_id = {last}").fetchone() == (N_POSTS,)
        # Run 3 scored the shards left over before its kill; the finished run skipped them all.
        assert con.execute(f"SELECT bool_and(skipped), count(*) FROM run_shards WHERE run_id = {last}").fetchone() == (True, SHARDS)
        assert sorted(r[0] for r in con.execute("SELECT post_id FROM post_sentiment").fetchall()) == [
            f"p{i:03d}" for i in range(N_POSTS)]
    parquet = duckdb.sql(f"SELECT count(*), count(DISTINCT post_id) FROM read_parquet('{out}/date=*/*.parquet')").fetchall()[0]
    assert parquet == (N_POSTS, N_POSTS)
    assert not list(out.rglob("*.tmp"))


def test_killed_runs_resume_to_exactly_once(prefect_harness, tmp_path):
    """Kill after the first shard, mid-way, and during the load; the rerun completes (shared test API)."""
    from prefect.settings import PREFECT_API_URL

    crash_and_resume(tmp_path, PREFECT_API_URL.value())


@pytest.mark.slow
def test_killed_runs_resume_with_their_own_ephemeral_prefect(tmp_path):
    """The same, each process starting its own ephemeral Prefect server (~20 s each here)."""
    crash_and_resume(tmp_path, None)


def test_stale_tmp_files_of_dead_processes_are_removed(tmp_path):
    """A killed writer's `.NAME.PID-SEQ.tmp` (mmsa.files) goes at the next run; a live writer's file stays."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    part = tmp_path / "out" / "date=2026-11-01"
    part.mkdir(parents=True)
    stale = part / f".x.parquet.{dead.stdout.strip()}-0.tmp"
    live = part / f".y.parquet.{os.getpid()}-0.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    killed, recent = (tmp_path / "out" / "_work" / f".scratch.{dead.stdout.strip()}-{n}.tmp" for n in (0, 1))
    for folder in (killed, recent):  # a killed run's downloaded dump; one of a day ago goes
        folder.mkdir(parents=True)
        (folder / "dump.jsonl").write_bytes(b"a whole dump")
    os.utime(killed, (time.time() - 90000, time.time() - 90000))
    pipeline.prepare(str(write_dump(tmp_path / "d.jsonl")), pipeline.RunOptions(db="x", out=str(tmp_path / "out"), shard_size=SHARD))
    assert not stale.exists() and live.exists()
    # of an hour ago it may be a live run's of another host or container sharing the folder: it stays
    assert [p.name for p in (tmp_path / "out" / "_work").glob(".scratch*")] == [recent.name]
    for near in (tmp_path / "out" / "_work", None):  # a downloaded dump is its user's alone
        with files.scratch(near) as folder:
            assert folder.stat().st_mode & 0o777 == 0o700


def test_second_run_on_the_same_database_is_refused(prefect_harness, tmp_path, capsys):
    """While one run holds <db>.lock, another exits 2 with a clear message and writes nothing."""
    dump, db, out = write_dump(tmp_path / "d.jsonl"), tmp_path / "m.duckdb", tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from mmsa import store\n"
                               f"with store.run_lock({str(db)!r}):\n print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out), "--quiet"]) == 2
    finally:
        holder.communicate("")
    assert f"another mmsa run holds {db}" in capsys.readouterr().err
    assert not db.exists() and not out.exists()
