"""Faults a nightly job meets (issue 36): what cannot be retried stops at once with one line and no traceback,
nothing is half-written, and the rerun scores every post exactly once; a damaged image cache heals itself.

Where the point is what the user sees, `mmsa score` runs as a subprocess and its output is read whole."""

import contextlib
import errno
import gzip
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from imageserver import encode, image_server, lying_length, send, textured_image  # noqa: F401  (fixture)
from mmsa import cli, faults, pipeline, source
from mmsa.flows import score  # Prefect sets its console logging up on import: here, not inside a capsys test
from mmsa.demo import make_dump, serve_folder
from mmsa.images.cache import CacheDamaged, ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images
from mmsa.images.status import ImageStatus

N_POSTS, SHARD = 60, 10
SHARDS = N_POSTS // SHARD


def write_dump(path: Path, n: int = N_POSTS) -> Path:
    """n text-only posts over three days: every shard of 10 writes three result files."""
    texts = ["love it, great day", "store opens at 9", "awful, broken again"]
    rows = [{"post_id": f"p{i:03d}", "created_at": f"2026-11-0{1 + i % 3}T10:{i % 60:02d}:00", "text": f"{texts[i % 3]} #{i}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mmsa_score(dump: Path, db: Path, out: Path, *extra: str, wrapper: str | None = None, env: dict | None = None):
    """`mmsa score` in a subprocess (under `wrapper`, a Python script that sets a fault up, when given)."""
    head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "mmsa.cli"]
    cmd = [*head, "score", str(dump), "--db", str(db), "--out", str(out), "--shard-size", str(SHARD), "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess, phrase: str) -> str:
    """The run failed (exit 1) and said so in one line holding `phrase`, among a few lines and no traceback."""
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 1, shown[-4000:]
    assert "Traceback" not in shown, shown[-4000:]
    lines = [line for line in shown.splitlines() if phrase in line]
    assert len(lines) == 1 and lines[0].startswith("mmsa score: error: "), shown[-4000:]
    assert len(shown.splitlines()) <= 20, shown
    return lines[0]


def assert_every_post_once(db: Path, out: Path, n: int = N_POSTS) -> None:
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT post_id) FROM scored_posts").fetchone() == (n, n)
    parquet = duckdb.sql(f"SELECT count(*), count(DISTINCT post_id) FROM read_parquet('{out}/date=*/*.parquet')").fetchall()[0]
    assert parquet == (n, n)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # nothing half-written left behind


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real small (or read-only) filesystem at `path`; the test is skipped where mounting is not allowed."""
    path.mkdir(parents=True)
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --- a full disk --------------------------------------------------------------------------------

# `mmsa score` on a disk that fills after `limit` result files: each later write fails as pyarrow's do.
FULL_DISK = """
import errno, sys
import pyarrow.parquet as pq

limit, real, written = int(sys.argv.pop(1)), pq.write_table, []

def write_table(table, where, *args, **kwargs):
    if "date=" in str(where):
        if len(written) >= limit:
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        written.append(where)
    return real(table, where, *args, **kwargs)

pq.write_table = write_table
from mmsa.cli import entry
entry()
"""


def test_a_disk_that_fills_mid_run_stops_it_in_one_line_and_the_rerun_scores_every_post_once(prefect_harness, tmp_path):
    dump, db, out = write_dump(tmp_path / "dump.jsonl"), tmp_path / "m.duckdb", tmp_path / "out"
    started = time.monotonic()
    proc = mmsa_score(dump, db, out, wrapper=FULL_DISK.replace("sys.argv.pop(1)", "6"))
    line = one_line(proc, "no space left")
    assert time.monotonic() - started < 60  # no retry waited 10 s, then 60 s
    assert re.search(r"no space left on /\S* \([\d.]+ \w+ free\) writing \S+\.parquet: free space and run the same "
                     r"command again; \d of 6 shards are kept$", line), line
    kept = int(re.search(r"(\d) of 6 shards", line)[1])
    assert 1 <= kept < SHARDS and not db.exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    rerun = mmsa_score(dump, db, out)  # space freed
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The other worker's shard, in flight when the disk filled, may still finish after the count: kept or one more.
    done = int(re.search(r"\((\d) shards scored, (\d) already done\)", rerun.stdout)[2])
    assert f"{N_POSTS} scored" in rerun.stdout and done in (kept, kept + 1), rerun.stdout
    assert_every_post_once(db, out)


def test_a_real_filesystem_filling_up_mid_run(prefect_harness, tmp_path):
    """The same on a real 8 MB tmpfs, filled by another writer once the run has scored its first shard."""
    dump, db = write_dump(tmp_path / "dump.jsonl", n=300), tmp_path / "m.duckdb"
    with tmpfs(tmp_path / "small", "size=8m") as small:
        out = small / "out"
        head = [sys.executable, "-m", "mmsa.cli", "score", str(dump), "--db", str(db), "--out", str(out),
                "--shard-size", "10", "--quiet"]
        run = subprocess.Popen(head, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(out.glob("_work/*/done/*/shard-*.json")):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first shard"
            time.sleep(0.002)
        # Unbuffered and with the suppress outside: a buffered file's close would raise the same ENOSPC.
        with contextlib.suppress(OSError), open(small / "filler", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 65536)
        stdout, stderr = run.communicate(timeout=120)
        line = one_line(subprocess.CompletedProcess(head, run.returncode, stdout, stderr), "no space left")
        assert f"no space left on {small} (" in line and line.endswith(" of 30 shards are kept")
        files = list(out.glob("date=*/*.parquet"))
        assert files and not [p for p in out.rglob("*") if ".tmp" in p.name]
        duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/date=*/*.parquet')")  # every file whole

        (small / "filler").unlink()
        rerun = subprocess.run(head, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert_every_post_once(db, out, n=300)


def test_a_permanent_failure_is_not_retried_and_a_transient_one_is(prefect_harness, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(score, "score_shard_task", score.score_shard_task.with_options(retry_delay_seconds=0))
    calls, real, fault = Counter(), pipeline.score_shard, {}

    def score_shard(shard, *args):
        name = Path(shard).stem
        calls[name] += 1
        if name in fault and calls[name] == 1:
            raise fault[name]
        return real(shard, *args)

    monkeypatch.setattr(pipeline, "score_shard", score_shard)
    dump, db, out = write_dump(tmp_path / "dump.jsonl"), tmp_path / "m.duckdb", tmp_path / "out"
    argv = ["score", str(dump), "--db", str(db), "--out", str(out), "--shard-size", str(SHARD), "--quiet"]

    fault["shard-00002"] = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")  # S3, a network blip
    assert cli.main(argv) == 0
    assert calls["shard-00002"] == 2 and calls["shard-00003"] == 1  # retried once, then scored

    calls.clear()
    fault.clear()
    fault["shard-00001"] = OSError(errno.EROFS, "Read-only file system")
    assert cli.main([*argv, "--force"]) == 1
    assert calls["shard-00001"] == 1  # not retried
    assert re.search(r"mmsa score: error: read-only filesystem: \S+/out: .*; \d of 6 shards are kept", capsys.readouterr().err)


# `mmsa score` with the dump's download retried at once (the flow waits 5 s, then 30 s).
NO_RETRY_WAIT = """
from mmsa.flows import score
score.prepare_task = score.prepare_task.with_options(retry_delay_seconds=0)
from mmsa.cli import entry
entry()
"""


def test_a_dump_download_that_breaks_off_is_retried_then_told_in_one_line(prefect_harness, image_server, tmp_path):
    """A dump URL that answers, then drops the connection mid-body (Content-Length unmet): the download is retried,
    and when every try broke off the run ends with one line saying so, no traceback, nothing stored."""
    body = write_dump(tmp_path / "dump.jsonl").read_bytes()
    url = image_server.route("/dump.jsonl", lying_length(body[:300], len(body), "application/x-ndjson"))
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    proc = mmsa_score(url, db, out, wrapper=NO_RETRY_WAIT)
    line = one_line(proc, "error: the dump's download")
    assert line == (f"mmsa score: error: the dump's download from {url} broke off after 300 bytes of {len(body):,} "
                    "(ProtocolError): nothing was scored; run the same command again once the server answers")
    assert image_server.hit_count("/dump.jsonl") == 3 and not db.exists()  # three tries, each said in its line
    assert len([x for x in proc.stderr.splitlines() if "broke off" in x and "Retry" in x]) == 2, proc.stderr


def test_a_dump_server_answering_5xx_or_429_is_tried_again_and_a_404_is_not(prefect_harness, image_server, tmp_path):
    """A 503 was read as a dump that is not there: exit 2 on the first answer, a nightly's day lost to a CDN's
    blip. 5xx, 429 and 408 are tried again; 404 stays one line, at once."""
    body = write_dump(tmp_path / "dump.jsonl").read_bytes()
    url = image_server.route("/dump.jsonl", send(503, b"busy", "text/plain"), send(200, body, "application/x-ndjson"))
    proc = mmsa_score(url, tmp_path / "m.duckdb", tmp_path / "out", wrapper=NO_RETRY_WAIT)
    assert proc.returncode == 0 and image_server.hit_count("/dump.jsonl") == 2, proc.stderr[-3000:]
    with pytest.raises(FileNotFoundError, match="dump not downloadable from .*: HTTP 404"):
        source.localise(image_server.url("gone.jsonl"), tmp_path / "dl")
    for code in (503, 429):
        url = image_server.route(f"/busy{code}.jsonl", send(code, b"busy", "text/plain"))
        with pytest.raises(faults.TransientError, match=f"the dump's server answered HTTP {code}"):
            source.localise(url, tmp_path / "dl")
    with pytest.raises(faults.TransientError, match="did not answer"):  # nothing listens: a server restarting
        source.localise("http://127.0.0.1:9/dump.jsonl", tmp_path / "dl")
    with pytest.raises(FileNotFoundError, match="dump not downloadable"):  # no such host: no retry makes one
        source.localise("http://no-such-host.invalid/dump.jsonl", tmp_path / "dl")


def test_a_resolvers_blip_is_tried_again(tmp_path, monkeypatch):
    """EAI_AGAIN ("temporary failure in name resolution") is no answer yet, not a host that does not exist."""
    def blip(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", blip)
    with pytest.raises(faults.TransientError, match="did not answer"):
        source.localise("http://dumps.example.com/dump.jsonl", tmp_path / "dl")


def test_bad_input_found_inside_a_flow_is_one_line_without_prefects_traceback(prefect_harness, tmp_path):
    """What only the flow finds (a rerun with another shard size: exit 2; a backfill's missing day: exit 1) ends
    with the command's one line; Prefect's console shows no traceback and no failed-state line of it."""
    dump, db, out = write_dump(tmp_path / "2026-11-01.jsonl", n=20), tmp_path / "m.duckdb", tmp_path / "out"
    assert mmsa_score(dump, db, out).returncode == 0
    proc = mmsa_score(dump, db, out, "--shard-size", "5")
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in shown and "in state Failed" not in shown, shown[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("mmsa score: error: ") and "--shard-size 10" in shown
    proc = subprocess.run([sys.executable, "-m", "mmsa.cli", "backfill", "--dump-template", str(tmp_path / "{date}.jsonl"),
                           "--from", "2026-11-01", "--to", "2026-11-02", "--db", str(db), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in shown and "in state Failed" not in shown, shown[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["2026-11-01  skipped", "2026-11-02  failed"], proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("mmsa backfill: error: 1 of 2 days failed: 2026-11-02")


# --- a locked database, a dead Prefect API, a damaged model -------------------------------------

HOLDER = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


def test_a_database_another_process_holds_is_named_with_that_process_and_the_next_run_loads_the_shards(
        prefect_harness, tmp_path):
    dump, db, out = write_dump(tmp_path / "dump.jsonl"), tmp_path / "m.duckdb", tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # an analyst's read-write session on the pipeline's file
        line = one_line(mmsa_score(dump, db, out), "is locked by")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert line.startswith(f"mmsa score: error: {db} is locked by PID {holder.pid} (python")
    assert line.endswith(f"close that session or point analysts at the snapshot {tmp_path / 'm.analyst.duckdb'}; "
                         f"the {SHARDS} scored shards are kept and the next run loads them")

    rerun = mmsa_score(dump, db, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"(0 shards scored, {SHARDS} already done)" in rerun.stdout
    assert_every_post_once(db, out)


def test_a_dead_prefect_api_url_fails_at_once_in_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    dump, out = write_dump(tmp_path / "dump.jsonl"), tmp_path / "out"
    started = time.monotonic()
    line = one_line(mmsa_score(dump, tmp_path / "m.duckdb", out, env={"PREFECT_API_URL": url}), "unreachable")
    assert time.monotonic() - started < 60
    assert line.startswith(f"mmsa score: error: the Prefect API at {url} is unreachable (")
    assert "unset PREFECT_API_URL" in line and not out.exists()  # nothing started


def test_debug_shows_the_traceback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    proc = mmsa_score(write_dump(tmp_path / "dump.jsonl"), tmp_path / "m.duckdb", tmp_path / "out", "--debug",
                      env={"PREFECT_API_URL": url})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "PermanentError: the Prefect API at" in proc.stderr


def test_a_damaged_model_folder_is_one_line_naming_it(prefect_harness, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(Path(pipeline.__file__).parent / "models" / "default", model)
    (model / "heads.safetensors").write_bytes((model / "heads.safetensors").read_bytes()[:100])  # cut short
    dump = write_dump(tmp_path / "dump.jsonl", n=5)
    assert cli.main(["score", str(dump), "--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out"),
                     "--model", str(model), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"mmsa score: error: model folder {model} is damaged or incomplete (SafetensorError" in err
    assert "Traceback" not in err and not (tmp_path / "m.duckdb").exists()


def test_a_read_only_output_folder_is_one_line(prefect_harness, tmp_path, capsys):
    dump = write_dump(tmp_path / "dump.jsonl", n=5)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert cli.main(["score", str(dump), "--db", str(tmp_path / "m.duckdb"), "--out", str(ro / "out"),
                         "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"mmsa score: error: read-only filesystem: {ro}/out\S*: mount it writable or choose another "
                     "folder, and run again", err), err


def test_paths_that_can_never_work_are_one_line_not_retried(prefect_harness, tmp_path, capsys):
    """--out under a file was retried for 35 s, then 180 lines of traceback; --db that is a folder, a traceback."""
    dump, blocker = write_dump(tmp_path / "dump.jsonl", n=5), tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "a-folder").mkdir()
    for db, out, what in ((tmp_path / "m.duckdb", blocker / "out", "a file where a folder is wanted"),
                          (blocker / "m.duckdb", tmp_path / "out1", "something is in the way"),
                          (tmp_path / "a-folder", tmp_path / "out2", "a folder where a file is wanted")):
        started = time.monotonic()
        assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"mmsa score: error: {what}: " in err and "Traceback" not in err, err
        assert time.monotonic() - started < 30  # no retry's 5 s and 30 s waits


def test_a_snapshot_that_cannot_be_copied_says_the_posts_are_stored(prefect_harness, tmp_path, capsys, monkeypatch):
    """A full disk while copying the analysts' snapshot said "the scored shards are kept and the next run loads
    them", while the load had committed: the rerun stored nothing. It says they are stored, and the next run
    publishes them."""
    from mmsa import publish

    dump, db, out = write_dump(tmp_path / "dump.jsonl", n=5), tmp_path / "m.duckdb", tmp_path / "out"
    real = publish.publish_snapshot

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(publish, "publish_snapshot", full)
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: no space left on .*; the run's 5 posts are stored in \S+m\.duckdb, the analysts' "
                     r"snapshot is from before it: the next run publishes it$", err.strip()), err
    assert "shards are kept" not in err and not publish.snapshot_path(db).exists()
    monkeypatch.setattr(publish, "publish_snapshot", real)
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out), "--quiet"]) == 0
    assert "0 scored, 5 already stored" in capsys.readouterr().out
    with duckdb.connect(str(publish.snapshot_path(db)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM scored_posts").fetchone() == (5,)


def test_a_backfill_stops_at_the_first_day_that_fails_permanently(prefect_harness, tmp_path, capsys):
    for day in ("2026-11-01", "2026-11-02"):
        write_dump(tmp_path / f"{day}.jsonl", n=5)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert cli.main(["backfill", "--dump-template", str(tmp_path / "{date}.jsonl"), "--from", "2026-11-01",
                         "--to", "2026-11-02", "--db", str(tmp_path / "m.duckdb"), "--out", str(ro / "out")]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"mmsa backfill: error: 2026-11-01: read-only filesystem: {ro}/out\S*: .*; 0 of 2 days are done$",
                     err.strip()), err


def test_what_cannot_be_retried_is_told_in_one_line_and_crosses_pickling():
    for exc, expected in [
        (PermissionError(errno.EACCES, "Permission denied", "/data/dump.jsonl"),
         "permission denied: /data/dump.jsonl: give this user access to it, or choose another path, and run again"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only filesystem ("),
        (RuntimeError('Failed to commit: Could not write file "/x.wal": No space left on device'), "no space left ("),
    ]:
        assert str(faults.as_permanent(exc)).startswith(expected)
    full = str(faults.as_permanent(OSError(errno.ENOSPC, "full"), "/tmp/no/such/folder/f.parquet"))
    assert re.fullmatch(r"no space left on / \([\d.]+ [kMG]?B free\) writing /tmp/no/such/folder/f\.parquet: free "
                        r"space and run the same command again", full.replace("bytes", "B")), full
    for transient in (ConnectionResetError(errno.ECONNRESET, "reset"), TimeoutError(), ValueError("bad row")):
        assert faults.as_permanent(transient) is None
    back = pickle.loads(pickle.dumps(faults.PermanentError("no space left on /data")))  # as from a Dask worker
    assert type(back) is faults.PermanentError and str(back) == "no space left on /data"


# --- a damaged image cache ----------------------------------------------------------------------


def _rows(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT post_id, image_status, label, image_label, p_positive FROM scored_posts "
                           "ORDER BY post_id").fetchall()


def test_damaged_cache_files_are_fetched_anew_and_the_labels_stay(prefect_harness, tmp_path):
    site = tmp_path / "site"
    with serve_folder(site) as base:
        make_dump(site, base, n_posts=24)
        db, out, cache = tmp_path / "m.duckdb", tmp_path / "out", tmp_path / "cache"
        argv = ["score", f"{base}/posts.jsonl", "--db", str(db), "--out", str(out), "--cache", str(cache),
                "--allow-hosts", "127.0.0.1", "--shard-size", "8", "--quiet"]
        assert cli.main(argv) == 0
        before = _rows(db)
        assert sum(r[1] == "ok" for r in before) == 22

        entries = {p: json.loads(p.read_text()) for p in sorted((cache / "src-v1" / "url").rglob("*.json"))}
        ok = [(p, e) for p, e in entries.items() if e["status"] == ImageStatus.OK]
        images = {e["image_key"]: cache / "src-v1" / "img" / e["image_key"][:2] / e["image_key"] for _, e in ok}
        keys = sorted(images)
        for key in keys[:6]:  # cut short
            images[key].write_bytes(images[key].read_bytes()[: images[key].stat().st_size // 2])
        for key in keys[6:12]:  # one byte flipped mid-file
            data = bytearray(images[key].read_bytes())
            data[len(data) // 2] ^= 0xFF
            images[key].write_bytes(bytes(data))
        index = [p for p, e in ok if e["image_key"] in keys[12:]]
        index[0].write_text(index[0].read_text()[:40])  # an index entry cut short
        index[1].write_text(json.dumps({**entries[index[1]], "image_key": "0" * 64}))  # names no stored image

        assert cli.main([*argv, "--force"]) == 0
        after = _rows(db)  # every image that was ok is ok again; labels and scores stay
        assert [r[:4] for r in after] == [r[:4] for r in before]
        assert [r[4] for r in after] == pytest.approx([r[4] for r in before], abs=1e-6)
        with duckdb.connect(str(db), read_only=True) as con:
            repaired = con.execute("SELECT cache_repaired FROM runs ORDER BY finished_at").fetchall()
        assert repaired == [(0,), (14,)]
        for key, path in images.items():
            assert ImageCache(cache).load(key) == path.read_bytes()  # whole again


def test_the_cache_check_counts_and_removes_each_kind_of_damage(image_server, tmp_path):
    body = encode(textured_image(64, 48, 1), "JPEG")
    image_server.route("/a.jpg", send(200, body, "image/jpeg"))
    url = image_server.url("a.jpg")
    cache = ImageCache(tmp_path / "c")
    config = FetchConfig(allow_hosts=("127.0.0.1",))
    first = fetch_images([("p", url)], config, cache, keep_images=True)[0]
    assert first.status == "ok" and not first.cache_repaired
    image = cache.root / "img" / first.image_key[:2] / first.image_key
    entry = next((cache.root / "url").rglob("*.json"))

    image.write_bytes(body[:-10])
    with pytest.raises(CacheDamaged):
        cache.load(first.image_key)
    assert not image.exists()  # removed on sight
    with pytest.raises(CacheDamaged):  # so another thread that had looked it up meets a damaged entry, not a crash
        cache.load(first.image_key)
    flipped = lambda: entry.write_bytes(entry.read_bytes()[:10] + b"\xff" + entry.read_bytes()[11:])  # noqa: E731
    for damage in (lambda: entry.write_text("{"), lambda: entry.write_text("[]"), lambda: image.unlink(missing_ok=True),
                   flipped, lambda: entry.write_text(entry.read_text().replace('"ok"', '"oK"'))):
        damage()
        again = fetch_images([("p", url)], config, cache, keep_images=True)[0]
        assert again.status == "ok" and again.cache_repaired and (again.image == first.image).all()
        assert cache.load(first.image_key) == body
    assert image_server.hit_count("/a.jpg") == 6  # the first fetch, then once per repair
    assert not fetch_images([("p", url)], config, cache, keep_images=True)[0].cache_repaired  # healed: a plain hit


# --- a dump still being appended to --------------------------------------------------------------


def test_a_new_dump_at_an_old_path_keeps_the_earlier_rejections_and_a_rerun_by_another_path_replaces_them(
        prefect_harness, tmp_path, monkeypatch):
    """A nightly `today.csv` (the same header every day): day 2's file holds other posts, so day 1's rejection is
    still a record no run scored; day 2 scored again as ./today.csv is the same bytes, not a third set."""
    monkeypatch.chdir(tmp_path)
    dump = tmp_path / "today.csv"
    argv = ["--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out"), "--quiet"]
    dump.write_text("post_id,created_at,text\nc1,2026-11-20T10:00:00Z,acme is fine\nc2,notadate,acme\n")
    assert cli.main(["score", str(dump), *argv]) == 0
    dump.write_text("post_id,created_at,text\nc3,2026-11-21T10:00:00Z,acme again\nc4,later,acme\n")
    assert cli.main(["score", str(dump), *argv]) == 0
    assert cli.main(["score", "./today.csv", *argv]) == 0
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM scored_posts").fetchone() == (2,)
        assert sorted(con.execute("SELECT post_id FROM rejected_posts").fetchall()) == [("c2",), ("c4",)]


def test_a_moved_output_folder_rebuilds_its_database_and_a_deleted_result_file_is_written_again(prefect_harness,
                                                                                                tmp_path):
    """Done markers name their Parquet files within the output folder: moved (or given relative from elsewhere),
    a rerun with a new database loads every post from where the folder is now; a result file deleted since is
    not trusted to its marker but written again."""
    dump = write_dump(tmp_path / "dump.jsonl", n=20)
    first, moved = tmp_path / "first", tmp_path / "moved"
    argv = ["score", str(dump), "--shard-size", "10", "--quiet"]
    assert cli.main([*argv, "--db", str(first / "m.duckdb"), "--out", str(first / "out")]) == 0
    first.rename(moved)
    for db in moved.glob("m.duckdb*"):
        db.unlink()
    lost = sorted((moved / "out").glob("date=*/*.parquet"))[0]
    lost.unlink()
    assert cli.main([*argv, "--db", str(moved / "m.duckdb"), "--out", str(moved / "out")]) == 0
    with duckdb.connect(str(moved / "m.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT post_id) FROM scored_posts").fetchone() == (20, 20)
        assert con.execute("SELECT shards FROM (SELECT count(*) FILTER (NOT skipped) AS shards FROM run_shards)"
                           ).fetchone() == (1,)  # the shard whose file was deleted, scored again
    assert lost.exists()


def test_a_load_that_fails_before_recording_its_run_leaves_the_database_as_it_was(prefect_harness, tmp_path,
                                                                                 monkeypatch):
    """Posts, rejections and the run's record are one transaction: a failure (a kill) between them leaves none of
    them, as docs/operations.md says, not posts without their run."""
    from mmsa import store

    dump = write_dump(tmp_path / "dump.jsonl", n=10)
    with dump.open("a") as fh:
        fh.write("not json\n")
    db = tmp_path / "m.duckdb"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the kill: not an error any handler would take

    monkeypatch.setattr(store, "record_run", killed)
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(tmp_path / "out"), "--quiet"]) == 130  # stopped
    with duckdb.connect(str(db), read_only=True) as con:
        assert [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("scored_posts", "rejected_posts", "runs")
                ] == [0, 0, 0]


def test_a_growing_dump_rejects_its_half_line_then_scores_the_whole_file_once(prefect_harness, tmp_path):
    dump, db, out = tmp_path / "dump.jsonl", tmp_path / "m.duckdb", tmp_path / "out"
    lines = write_dump(tmp_path / "full.jsonl", n=16).read_text().splitlines(keepends=True)
    dump.write_text("".join(lines[:12]) + lines[12][:25])  # the writer is mid-line
    argv = ["score", str(dump), "--db", str(db), "--out", str(out), "--shard-size", "5", "--quiet"]
    assert cli.main(argv) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT posts_in, posts_scored, posts_rejected FROM runs").fetchall() == [(13, 12, 1)]
        assert con.execute("SELECT line, reason LIKE 'invalid JSON%' FROM rejected_posts").fetchall() == [(13, True)]

    with dump.open("a") as fh:  # the writer finishes its line and adds three more
        fh.write(lines[12][25:] + "".join(lines[13:]))
    assert cli.main(argv) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT post_id) FROM scored_posts").fetchone() == (16, 16)
        assert con.execute("SELECT count(*) FROM rejected_posts").fetchone() == (0,)
        assert con.execute("SELECT posts_in, posts_scored, posts_rejected FROM runs ORDER BY finished_at").fetchall() \
            == [(13, 12, 1), (16, 16, 0)]

    # Read while its first line was being written, a file held no post: then its rejection was kept beside the
    # posts of the whole file (it was told by the first post, which it lacked); so was a damaged file's, mended.
    for name, early in (("first.jsonl", lines[0][:25]), ("damaged.jsonl.gz", "not gzip at all")):
        dump = tmp_path / name
        dump.write_text(early)
        assert cli.main([*argv[:1], str(dump), *argv[2:]]) == 0
        with (gzip.open if name.endswith(".gz") else open)(dump, "wt") as fh:
            fh.write("".join(lines[:3]))
        assert cli.main([*argv[:1], str(dump), *argv[2:]]) == 0
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM rejected_posts WHERE dump = $d", {"d": str(dump)}).fetchone() == (0,), name
    # but a night's export of several records, all rejected, is a dump of its own: the next night's keeps them
    dump = tmp_path / "today.jsonl"
    dump.write_text('{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    assert cli.main([*argv[:1], str(dump), *argv[2:]]) == 0
    dump.write_text("".join(lines[3:6]))
    assert cli.main([*argv[:1], str(dump), *argv[2:]]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM rejected_posts WHERE dump = $d", {"d": str(dump)}).fetchone() == (3,)


@pytest.mark.slow  # a 2-process Dask LocalCluster: each worker imports torch
def test_a_permanent_failure_on_a_dask_worker_is_the_same_one_line(prefect_harness, tmp_path):
    """Every task runs on a worker: the read-only folder fails `prepare-dump` there, and the error that crosses
    back is still the PermanentError, said in one line, not retried."""
    dump = write_dump(tmp_path / "dump.jsonl", n=5)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        started = time.monotonic()
        proc = mmsa_score(dump, tmp_path / "m.duckdb", ro / "out", "--runner", "dask", "--dask-workers", "2")
        line = one_line(proc, "read-only filesystem")
    assert time.monotonic() - started < 120  # retries would wait 5 s, then 30 s, on top of the cluster's start
    assert f"read-only filesystem: {ro}/out" in line
