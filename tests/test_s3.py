"""Object storage: a dump read from s3://, Parquet, work folder and image cache written to s3://, the local
DuckDB file loaded from the bucket, against a real S3 API (moto's server, on 127.0.0.1, started here).

Configured only the standard way: AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the
environment, read by s3fs/botocore (and by pyarrow's own S3 filesystem, which reads what we wrote).
"""

import os
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from mmsa import cli

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "mmsa-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the standard AWS variables pointing at it; yields an s3fs filesystem."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    before = {k: os.environ.get(k) for k in names}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _rows(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchone()


def test_score_from_and_to_a_bucket_loads_local_duckdb_exactly_once(s3, prefect_harness, tmp_path, monkeypatch):
    import tempfile

    from mmsa.demo import make_dump, serve_folder

    scratch = tmp_path / "tmp"  # where a bucket's dump is downloaded to be read: it stayed there, every night's
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    site = tmp_path / "site"
    with serve_folder(site) as base:
        dump = make_dump(site, base, n_posts=20)
        s3.put_file(str(dump), f"{BUCKET}/dumps/2026-11-16.jsonl")
        args = ["score", f"s3://{BUCKET}/dumps/2026-11-16.jsonl", "--db", str(tmp_path / "m.duckdb"),
                "--out", f"s3://{BUCKET}/out", "--cache", f"s3://{BUCKET}/cache", "--allow-hosts", "127.0.0.1",
                "--shard-size", "8", "--quiet"]
        assert cli.main(args) == 0
        first = _rows(tmp_path / "m.duckdb")
        assert first[0] == first[1] and first[0] >= 18  # the demo dump's broken rows are rejected, not scored
        assert cli.main(args) == 0  # a rerun: every shard already done, nothing doubled
        assert _rows(tmp_path / "m.duckdb") == first
        # the day's dump again with one more post: another dump, whose posts the first dump's files give up
        s3.pipe_file(f"{BUCKET}/dumps/2026-11-16-full.jsonl", dump.read_bytes() + b'{"post_id": "late", '
                     b'"created_at": "2026-11-16T23:00:00Z", "text": "acme, late but fine"}\n')
        assert cli.main([*args[:1], f"s3://{BUCKET}/dumps/2026-11-16-full.jsonl", *args[2:]]) == 0

    assert _rows(tmp_path / "m.duckdb") == (first[0] + 1, first[1] + 1)
    assert not list(scratch.rglob("*.jsonl"))
    first = _rows(tmp_path / "m.duckdb")
    parquet = s3.glob(f"{BUCKET}/out/date=*/*.parquet")
    assert parquet and not s3.glob(f"{BUCKET}/out/**/*.tmp")
    assert len(s3.glob(f"{BUCKET}/out/_work/*/done/*/shard-*.json")) == len(s3.glob(f"{BUCKET}/out/_work/*/shards/*.parquet"))
    assert len(s3.glob(f"{BUCKET}/cache/src-v1/img/*/*")) >= 15  # the downloaded images, in the bucket
    assert s3.glob(f"{BUCKET}/cache/src-v1/url/*/*.json")
    assert s3.glob(f"{BUCKET}/out/_reports/*/*.png")  # the headline's charts, beside the Parquet
    # What we wrote through s3fs reads back through pyarrow's own S3 filesystem (same standard configuration).
    from pyarrow import fs as pafs

    native, path = pafs.FileSystem.from_uri(f"s3://{BUCKET}/out")
    assert isinstance(native, pafs.S3FileSystem)
    total = sum(pq.read_table(f, filesystem=native).num_rows for f in parquet)
    assert total == first[0]
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)
        assert con.execute("SELECT count(*) FROM scored_posts WHERE image_status = 'ok'").fetchone()[0] >= 15


def test_an_output_bucket_that_does_not_exist_is_named(s3, prefect_harness, tmp_path, capsys):
    dump = tmp_path / "d.jsonl"
    dump.write_text('{"post_id": "1", "created_at": 1, "text": "acme"}\n')
    assert cli.main(["score", str(dump), "--db", str(tmp_path / "m.duckdb"), "--out", "s3://no-such-bucket/out",
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmsa score: error: s3://no-such-bucket/out/") and "bucket does not exist" in err[-1]


def test_fetch_reads_a_dump_from_a_bucket_and_caches_there(s3, tmp_path):
    from mmsa.demo import make_dump, serve_folder

    site = tmp_path / "site"
    with serve_folder(site) as base:
        dump = make_dump(site, base, n_posts=6)
        s3.put_file(str(dump), f"{BUCKET}/fetch-dumps/day.jsonl")
        assert cli.main(["fetch", f"s3://{BUCKET}/fetch-dumps/", "--cache", f"s3://{BUCKET}/fetch-cache",
                         "--allow-hosts", "127.0.0.1", "--quiet", "--fetch-processes", "2"]) == 0  # workers write the bucket
    status = pq.read_table(f"{BUCKET}/fetch-cache/status/fetch-dumps.parquet", filesystem=s3)
    assert status.num_rows >= 6 and "ok" in status["status"].to_pylist()
    assert s3.glob(f"{BUCKET}/fetch-cache/src-v1/img/*/*")


def test_a_killed_run_on_a_bucket_resumes_to_exactly_once(s3, prefect_harness, tmp_path):
    """SIGKILL `mmsa score` (a subprocess) after its first shard is in the bucket; the rerun scores only the rest,
    and every post is there once, in DuckDB and in the bucket's Parquet."""
    from prefect.settings import PREFECT_API_URL

    n_posts, shard = 60, 10
    rows = [{"post_id": f"p{i:03d}", "created_at": f"2026-11-0{1 + i % 3}T10:{i % 60:02d}:00", "text": f"fine day #{i}"}
            for i in range(n_posts)]
    s3.pipe_file(f"{BUCKET}/crash/dump.jsonl", "".join(__import__("json").dumps(r) + "\n" for r in rows).encode())
    db, out = tmp_path / "m.duckdb", f"s3://{BUCKET}/crash-out"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "mmsa.cli", "score", f"s3://{BUCKET}/crash/dump.jsonl", "--db", str(db), "--out", out,
           "--shard-size", str(shard), "--quiet"]
    markers = f"{BUCKET}/crash-out/_work/*/done/*/shard-*.json"
    with open(tmp_path / "score.log", "a") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while not s3.glob(markers):
            s3.invalidate_cache()
            assert proc.poll() is None, (tmp_path / "score.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    s3.invalidate_cache()
    done = len(s3.glob(markers))
    assert 1 <= done < n_posts // shard and not db.exists()
    # Every object in the bucket is whole: each shard's Parquet file reads.
    for f in s3.glob(f"{BUCKET}/crash-out/date=*/*.parquet") + s3.glob(f"{BUCKET}/crash-out/_work/*/shards/*.parquet"):
        pq.read_table(f, filesystem=s3)

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{n_posts} scored" in result.stdout and f"{done} already done" in result.stdout
    assert _rows(db) == (n_posts, n_posts)
    s3.invalidate_cache()
    files = s3.glob(f"{BUCKET}/crash-out/date=*/*.parquet")
    ids = [i for f in files for i in pq.read_table(f, filesystem=s3, columns=["post_id"])["post_id"].to_pylist()]
    assert sorted(ids) == [f"p{i:03d}" for i in range(n_posts)]
