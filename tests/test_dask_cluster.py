"""A real Dask cluster: `dask scheduler` and two `dask worker` processes (not an in-process LocalCluster),
and a `prefect server start` that the command and the workers report to, as on several machines.

`mmsa score --runner dask --dask-address ...` scores every post exactly once; then one worker is killed
(its whole process group, nanny and all: a machine lost) mid-run, and the run, or a rerun, completes with
every post exactly once. Slow (workers import torch and load the model on a 2-core machine):
`pytest -m slow tests/test_dask_cluster.py`.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            assert proc.poll() is None, f"{what}: {proc.args[:3]} ended with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class Cluster:
    """Prefect server, Dask scheduler and workers as subprocesses, each in its own process group."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        self.env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                        PREFECT_UI_ENABLED="false", PREFECT_API_BLOCKS_REGISTER_ON_START="false")

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def up(self, workers: int = 2) -> None:
        api_port, dask_port = _free_port(), _free_port()
        self.api = f"http://127.0.0.1:{api_port}/api"
        self.address = f"tcp://127.0.0.1:{dask_port}"
        server = self.start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(api_port), "--no-services"])
        scheduler = self.start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                             str(dask_port), "--no-dashboard"])
        # Workers on other machines need the running server's URL: an ephemeral server of their own would
        # record their task runs where the flow never looks.
        self.env["PREFECT_API_URL"] = self.api
        for i in range(workers):
            self.start(f"worker{i}", [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--name", f"w{i}",
                                      "--no-dashboard", "--local-directory", str(self.tmp / f"dask-w{i}")])
        _wait_for(lambda: _answers(f"{self.api}/health"), 180, "prefect server", [server])
        _wait_for(lambda: self.workers() >= workers, 180, "dask workers", [scheduler])

    def workers(self) -> int:
        from distributed import Client

        try:
            with Client(self.address, timeout=5) as client:
                return len(client.scheduler_info()["workers"])
        except OSError:
            return 0

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def down(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def score(self, dump: str, db: Path, out: Path, cache: Path, shard_size: int) -> subprocess.Popen:
        cmd = [str(BIN / "mmsa"), "score", dump, "--db", str(db), "--out", str(out), "--cache", str(cache),
               "--allow-hosts", "127.0.0.1", "--shard-size", str(shard_size), "--quiet", "--runner", "dask",
               "--dask-address", self.address]
        log = open(self.tmp / "score.log", "a")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _rows(db: Path):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchone()


def _parquet_ids(out: Path) -> list[str]:
    return [r[0] for r in duckdb.sql(f"SELECT post_id FROM read_parquet('{out}/date=*/*.parquet')").fetchall()]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        yield c
    finally:
        c.down()


def test_score_on_a_dask_cluster_exactly_once_and_after_losing_a_worker(cluster, tmp_path):
    from mmsa.demo import make_dump, serve_folder

    site = tmp_path / "site"
    with serve_folder(site) as base:
        dump = make_dump(site, base, n_posts=48)
        posts = [json.loads(line) for line in dump.read_text().splitlines()]
        db, out, cache = tmp_path / "a.duckdb", tmp_path / "a", tmp_path / "cache"
        run = cluster.score(str(dump), db, out, cache, shard_size=8)
        assert run.wait(timeout=600) == 0, (tmp_path / "score.log").read_text()[-4000:]
        scored, distinct = _rows(db)
        assert scored == distinct and scored >= len(posts) - 3  # the demo's few broken rows are rejected
        assert sorted(_parquet_ids(out)) == sorted(set(_parquet_ids(out))) and len(_parquet_ids(out)) == scored
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM run_shards WHERE NOT skipped").fetchone()[0] >= 6

        # A worker lost mid-run: killed (nanny and worker) once the first shard is done.
        db, out = tmp_path / "b.duckdb", tmp_path / "b"
        shutil.rmtree(cache)
        run = cluster.score(str(dump), db, out, cache, shard_size=4)
        _wait_for(lambda: list(out.glob("_work/*/done/*/shard-*.json")), 600, "first shard", [run])
        cluster.kill("worker1")
        shards = len(list(out.glob("_work/*/shards/shard-*.parquet")))
        assert len(list(out.glob("_work/*/done/*/shard-*.json"))) < shards  # killed mid-run: shards still to score
        first = run.wait(timeout=600)  # Dask moves the lost worker's shards to the other; or the run fails
        rerun = cluster.score(str(dump), db, out, cache, shard_size=4)
        assert rerun.wait(timeout=600) == 0, (tmp_path / "score.log").read_text()[-4000:]
        assert _rows(db) == (scored, scored)
        ids = _parquet_ids(out)
        assert len(ids) == len(set(ids)) == scored
        assert not list(out.rglob("*.tmp"))  # a killed worker's half-written files were removed by the rerun
        with duckdb.connect(str(db), read_only=True) as con:
            last = "(SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1)"
            # the rerun stores what no load took: nothing when the killed run completed, else every post (the
            # killed run's shards were scored but never loaded)
            stored = con.execute(f"SELECT posts_scored FROM runs WHERE run_id = {last}").fetchone()
            assert stored == ((0,) if first == 0 else (scored,))
            if first == 0:  # the killed run completed on the surviving worker: the rerun had nothing left
                assert con.execute(f"SELECT bool_and(skipped) FROM run_shards WHERE run_id = {last}").fetchone() == (True,)
