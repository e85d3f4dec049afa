"""End to end: a dump whose images come from a real HTTP server on 127.0.0.1, scored by the
real Prefect flow into real Parquet files and a real DuckDB file."""

import json
import logging
import threading
from pathlib import Path

import duckdb
import pytest

from imageserver import Concurrency, encode, image_server, send, textured_image  # noqa: F401  (fixture)
from mmsa import cli, pipeline, report, source
from mmsa.demo import make_dump, serve_folder
from mmsa.images.config import FetchConfig
from mmsa.infer import Engine
from mmsa.model import load_model


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served folder with a generated 20-post dump (one 404 image, one post without image, one bad row)."""
    folder = tmp_path_factory.mktemp("site")
    with serve_folder(folder) as base:
        dump = make_dump(folder, base, n_posts=20)
        with dump.open("a") as fh:
            fh.write(json.dumps({"post_id": "demo-000", "created_at": "2026-11-16", "text": "duplicate id"}) + "\n")
            fh.write("this line is not json\n")
        yield base, dump


def _score(base, db, out, *extra):
    return cli.main(["score", f"{base}/posts.jsonl", "--db", str(db), "--out", str(out),
                     "--shard-size", "8", "--allow-hosts", "127.0.0.1", *extra])


def test_score_writes_one_row_per_accepted_post(prefect_harness, site, tmp_path):
    base, dump = site
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _score(base, db, out) == 0
    assert not [p for p in out.rglob("*") if p.suffix == ".jsonl"]  # the downloaded dump, once cut, is gone

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT post_id, image_status, label, p_positive + p_neutral + p_negative, sentiment_score,"
                       " p_positive - p_negative, text_label, image_label FROM post_sentiment ORDER BY post_id").fetchall()
        rejected = con.sql("SELECT post_id, reason FROM rejected_posts ORDER BY line").fetchall()
        runs = con.sql("SELECT posts_in, posts_scored, posts_rejected FROM runs").fetchall()
        models = con.sql("SELECT model_version, quantification FROM models").fetchall()
    assert [r[0] for r in rows] == [f"demo-{i:03d}" for i in range(20)]
    # The model's quantification statistics travel from its config.json to the reports' table.
    shipped = load_model("default")
    stats = shipped.config.get("quantification")
    assert models == [(shipped.version, None if stats is None else json.dumps(stats))]
    status = {r[0]: r[1] for r in rows}
    assert status["demo-003"] == "http_404" and status["demo-005"] == "no_image"
    assert sum(s == "ok" for s in status.values()) == 18
    for _, st, label, total, score, diff, text_label, image_label in rows:
        assert label in ("positive", "neutral", "negative") and text_label in ("positive", "neutral", "negative")
        assert abs(total - 1) < 1e-6 and abs(score - diff) < 1e-12
        assert (image_label is None) == (st != "ok")
    assert [r[1].split(" (")[0] for r in rejected] == ["created_at is not ISO-8601 or an epoch time: 'last tuesday'", "duplicate post_id",
                                                      "invalid JSON: Expecting value"]
    assert runs == [(23, 20, 3)]

    parts = sorted(p.relative_to(out).parts[0] for p in out.glob("date=*/*.parquet"))
    assert parts and all(p.startswith("date=2026-11-") for p in parts)
    n = duckdb.sql(f"SELECT count(*), count(DISTINCT post_id) FROM read_parquet('{out}/date=*/*.parquet')").fetchall()
    assert n == [(20, 20)]

    # The shipped model reads the generated texts right most of the time.
    truth = {json.loads(line)["post_id"]: json.loads(line)["text"] for line in dump.read_text().splitlines()[:20]}
    labels = {r[0]: r[2] for r in rows}
    hits = sum(("love" in truth[p] or "Great" in truth[p] or "happy" in truth[p] or "amazing" in truth[p]) == (labels[p] == "positive") for p in labels)
    assert hits >= 14

    table = report.run_report("daily_brand_sentiment", db)
    assert sum(table["posts"].to_pylist()) == 20


def test_a_post_of_images_only_none_of_which_came_is_stored_unscored_not_guessed(prefect_harness, site, tmp_path, capsys):
    """No text and its one image a 404: the model would read nothing, so the post is kept with its image status,
    every prediction NULL and its reason, and counted so by the run summary, the runs report, the headline,
    unscored_posts (untagged as it is) and image_status_mix; the same post with its image is scored."""
    base, _ = site
    dump = tmp_path / "images.jsonl"
    dump.write_text("".join(json.dumps({"post_id": pid, "created_at": "2026-11-20T10:00:00Z", "image_url": f"{base}/{name}"})
                            + "\n" for pid, name in (("gone", "images/missing.jpg"), ("there", "images/img000.jpg"))))
    db = tmp_path / "m.duckdb"
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(tmp_path / "out"), "--allow-hosts", "127.0.0.1"]) == 0
    assert "rows in, 1 scored + 1 stored unscored, 0 rejected" in capsys.readouterr().out
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT post_id, image_status, label, text_label, brand_label, unscored_reason FROM post_sentiment "
                       "ORDER BY post_id").fetchall()
    assert rows[0] == ("gone", "http_404", None, None, None, "no_text_and_no_usable_image")
    assert rows[1][:2] == ("there", "ok") and rows[1][2] is not None and rows[1][5] is None
    unscored = report.run_report("unscored_posts", db).to_pylist()  # untagged: brand NULL, still listed
    assert [(r["brand"], r["unscored_reason"], r["posts"]) for r in unscored] == [(None, "no_text_and_no_usable_image", 1)]
    run = report.run_report("runs", db).to_pylist()[0]
    assert (run["posts_scored"], run["posts_unscored"], run["stored_unscored"]) == (1, 1, 1)
    assert "2 posts in, 1 scored + 1 stored unscored, 0 rejected" in report.headline_markdown(db).markdown
    # a rerun finds its shard done and loaded: it stores nothing, and says so (it counted the earlier run's posts)
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(tmp_path / "out"), "--allow-hosts", "127.0.0.1"]) == 0
    rerun = report.run_report("runs", db).to_pylist()[-1]
    assert (rerun["posts_scored"], rerun["posts_unscored"], rerun["stored_posts"]) == (0, 0, 0)
    assert json.loads(rerun["image_status"]) == {}  # the mix of what it stored: the first run's images counted once
    assert "2 posts in, 0 scored, 2 already stored, 0 rejected, in 0 s. Images: none." in report.headline_markdown(db).markdown
    out = capsys.readouterr().out
    assert "2 rows in, 0 scored, 2 already stored, 0 rejected" in out and "No post was stored by this run." in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")  # a night's export that came out empty read as a good night
    assert cli.main(["score", str(empty), "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    assert "The dump holds no record: nothing was stored." in capsys.readouterr().out
    mix = {r["image_status"]: (r["posts"], r["images"]) for r in report.run_report("image_status_mix", db).to_pylist()}
    assert mix == {"http_404": (1, 1), "ok": (1, 1)}  # its failed image is data quality too


def test_second_run_adds_no_duplicates_and_force_rescores(prefect_harness, site, tmp_path):
    base, _ = site
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _score(base, db, out) == 0
    first = sorted(p.name for p in out.glob("date=*/*.parquet"))
    assert _score(base, db, out) == 0
    assert _score(base, db, out, "--force") == 0
    assert sorted(p.name for p in out.glob("date=*/*.parquet")) == first
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchall() == [(20, 20)]
        assert con.sql("SELECT count(*) FROM rejected_posts").fetchall() == [(3,)]
        runs = con.sql("SELECT posts_scored FROM runs ORDER BY started_at").fetchall()
        assert runs == [(20,), (0,), (20,)]  # the plain rerun stored nothing: every shard was done and loaded
        assert con.sql("SELECT count(DISTINCT run_id) FROM post_sentiment").fetchall() == [(1,)]
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/date=*/*.parquet')").fetchall()
    assert n == [(20,)]


def test_a_dump_read_the_wrong_way_streams_its_rejections_shard_by_shard(prefect_harness, tmp_path, monkeypatch):
    """Every record of a dump read with the wrong --source-format is rejected: they were all held in memory (a
    large dump's run died of it) and written as one file. They go out with shards of REJECTED_PER_SHARD each, and
    every one is stored, once."""
    monkeypatch.setattr(source, "REJECTED_PER_SHARD", 4)
    dump = tmp_path / "d.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"p{n}", "created_at": "2026-11-20T10:00:00Z", "text": "acme"}) + "\n"
                            for n in range(10)))
    shards = list(source.iter_shards(dump, 512, options=source.ReadOptions(source_format="mastodon")))
    assert [len(s.rejected) for s in shards] == [4, 4, 2] and all(s.posts.num_rows == 0 for s in shards)
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    argv = ["score", str(dump), "--db", str(db), "--out", str(out), "--source-format", "mastodon", "--quiet"]
    assert cli.main(argv) == 0 and cli.main(argv) == 0  # a rerun replaces them
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT count(*), count(DISTINCT line) FROM rejected_posts").fetchall() == [(10, 10)]
        assert con.sql("SELECT posts_in, posts_rejected FROM runs").fetchall() == [(10, 10), (10, 10)]


def test_a_post_a_later_dump_dates_otherwise_keeps_one_row_in_the_parquet_folder(prefect_harness, tmp_path):
    """The Parquet folder holds one row per post and model, as the database does: a post whose time a later dump
    mends onto another day left its old row in the old day's partition (the folder counted it twice)."""
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"post_id": "p1", "created_at": "2026-11-20T23:30:00Z", "text": "acme is fine"}) + "\n"
                     + json.dumps({"post_id": "p2", "created_at": "2026-11-20T10:00:00Z", "text": "acme ok"}) + "\n")
    second.write_text(json.dumps({"post_id": "p1", "created_at": "2026-11-21T04:30:00Z", "text": "acme is fine"}) + "\n")
    for dump in (first, second):
        assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out), "--quiet"]) == 0
    rows = duckdb.sql(f"SELECT post_id, date FROM read_parquet('{out}/date=*/*.parquet', hive_partitioning=true) "
                      "ORDER BY 1").fetchall()
    assert [(p, str(d)) for p, d in rows] == [("p1", "2026-11-21"), ("p2", "2026-11-20")]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT post_id, CAST(day AS VARCHAR) FROM post_sentiment ORDER BY 1").fetchall() == [
            ("p1", "2026-11-21"), ("p2", "2026-11-20")]


def test_a_rerun_of_an_older_dump_leaves_a_post_a_newer_dump_changed(prefect_harness, tmp_path):
    """Every load upserted all the dump's shards, skipped ones too: rerunning yesterday's export after today's
    (which edited the posts) put back their old text without scoring anything. A run stores what it scores, and
    what no load has taken yet (a run stopped before its load); in the database and in OUT's Parquet, the post
    stored last stays."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    for path, text in ((old, "acme support was helpful"), (new, "acme support was helpful. EDITED: never mind, useless")):
        path.write_text("".join(json.dumps({"post_id": f"p{i}", "created_at": "2026-11-20T10:00:00Z", "text": text}) + "\n"
                                for i in range(3)))
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    for dump in (old, new, old):
        assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        texts = con.sql("SELECT DISTINCT text FROM scored_posts").fetchall()
        runs = con.sql("SELECT posts_scored FROM runs ORDER BY started_at").fetchall()
    assert texts == [("acme support was helpful. EDITED: never mind, useless",)] and runs == [(3,), (3,), (0,)]
    # OUT holds the same one row per post (the older dump's files kept theirs: 6 rows for 3 posts)
    parquet = f"read_parquet('{out}/date=*/*.parquet')"
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT post_id), min(text) FROM {parquet}").fetchall() == [(3, 3, texts[0][0])]
    assert cli.main(["score", str(old), "--db", str(db), "--out", str(out), "--force"]) == 0  # asked for: stored last
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT post_id), min(text) FROM {parquet}").fetchall() == [
        (3, 3, "acme support was helpful")]


def test_a_folders_file_of_no_dump_format_is_named_once(prefect_harness, tmp_path):
    """The command's check before the run named it too, so each warning came twice."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "posts.jsonl").write_text(json.dumps({"post_id": "p", "created_at": "2026-11-20T10:00:00Z", "text": "ok"}) + "\n")
    (folder / "notes.txt").write_text("not a dump")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append  # on the logger itself: Prefect's logging setup at a first flow run replaces root's
    logging.getLogger("mmsa.source").addHandler(handler)
    try:
        assert cli.main(["score", str(folder), "--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out")]) == 0
    finally:
        logging.getLogger("mmsa.source").removeHandler(handler)
    assert sum("not read: notes.txt" in r.getMessage() for r in seen) == 1


def test_shards_scored_again_by_a_run_stopped_before_its_load_are_loaded_by_the_next(prefect_harness, tmp_path, monkeypatch):
    """`--force` wrote the shard's files again under their names, then the run died before its load: the next plain
    run finds the shard done, and must load it (its files were recorded as loaded, from the first run). A database
    from before loaded files were recorded counts a shard loaded by the run that scored it."""
    from mmsa import store

    dump = tmp_path / "d.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"p{i}", "created_at": "2026-11-20T10:00:00Z", "text": "acme is fine"})
                            + "\n" for i in range(3)))
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    argv = ["score", str(dump), "--db", str(db), "--out", str(out)]
    assert cli.main(argv) == 0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the kill

    with monkeypatch.context() as m:
        m.setattr(store, "load_scored", killed)
        assert cli.main([*argv, "--force"]) == 130  # stopped, in one line
    forced = duckdb.sql(f"SELECT DISTINCT run_id FROM read_parquet('{out}/date=*/*.parquet')").fetchall()
    assert cli.main(argv) == 0
    with duckdb.connect(str(db)) as con:
        assert con.sql("SELECT DISTINCT run_id FROM scored_posts").fetchall() == forced
        con.execute("DROP TABLE loaded_files")  # as a database written before the table
    assert cli.main(argv) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT posts_scored FROM runs ORDER BY started_at").fetchall() == [(3,), (3,), (0,)]


def test_local_image_paths_are_refused_unless_allowed(prefect_harness, tmp_path):
    img = tmp_path / "a.jpg"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
    dump = tmp_path / "local.jsonl"
    dump.write_text(json.dumps({"post_id": "l1", "created_at": "2026-11-20", "text": "hi", "image_url": str(img)}) + "\n")
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT image_status, text_label IS NULL FROM post_sentiment").fetchall() == [("local_file_refused", False)]
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(out / "b"), "--allow-local-files", "--force"]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT image_status, image_label IS NULL FROM post_sentiment").fetchall() == [("ok", False)]


def test_rerun_with_another_shard_size_is_refused(prefect_harness, site, tmp_path, capsys):
    base, _ = site
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _score(base, db, out) == 0
    assert cli.main(["score", f"{base}/posts.jsonl", "--db", str(db), "--out", str(out), "--shard-size", "5",
                     "--allow-hosts", "127.0.0.1"]) == 2
    assert "rerun with --shard-size 8, or without --shard-size" in capsys.readouterr().err
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment").fetchall() == [(20, 20)]


def test_bad_run_options_and_a_missing_dump_are_one_line_before_any_work(prefect_harness, site, tmp_path, capsys):
    """A shard size below 1, a mapping file that is not YAML, a dump that is not there or not served (no server,
    or a 404): exit 2 with one line and no traceback, and no work folder that would make the next run of the
    dump fail too."""
    base, _ = site
    dump = tmp_path / "d.jsonl"
    dump.write_text('{"post_id": "p", "created_at": "2026-11-20T10:00:00Z", "text": "acme"}\n')
    bad_map = tmp_path / "map.yaml"
    bad_map.write_text("text: [unclosed\n")
    out = tmp_path / "out"
    common = ["--db", str(tmp_path / "m.duckdb"), "--out", str(out)]
    for argv, said in (([str(dump), "--shard-size", "0"], "--shard-size must be at least 1, got 0"),
                       ([str(dump), "--map-file", str(bad_map)], "map.yaml: not YAML or JSON: expected ',' or ']'"),
                       ([str(dump), "--map-file", str(tmp_path / "none.yaml")], "mapping file not found: "),
                       ([str(dump), "--map", "text"], "--map wants FIELD=PATH (e.g. text=full_text), got 'text'"),
                       ([str(tmp_path / "missing.jsonl")], "dump not found"),
                       (["http://127.0.0.1:9/dump.jsonl"], "dump not downloadable from http://127.0.0.1:9/dump.jsonl"),
                       ([f"{base}/nothing.jsonl"], f"dump not downloadable from {base}/nothing.jsonl: HTTP 404")):
        assert cli.main(["score", *argv, *common]) == 2, argv
        err = capsys.readouterr().err
        assert said in err.splitlines()[-1] and "Traceback" not in err, argv
        assert not list(out.glob("_work/*/manifest.json")), argv
    # a database in a bucket: it scored, made a local folder "s3:", then failed at the load with a traceback
    assert cli.main(["score", str(dump), "--out", str(out), "--db", "s3://posts/mmsa.duckdb"]) == 2
    assert "--db s3://posts/mmsa.duckdb: the database is a local file" in capsys.readouterr().err
    assert not list(out.glob("_work/*/manifest.json")) and not Path("s3:").exists()


def test_rerun_without_a_shard_size_keeps_the_earlier_runs(prefect_harness, site, tmp_path, capsys):
    """A dump cut at 8 by an earlier run is cut at 8 again (not the default 512): its scored shards are
    recognised and skipped, so a crashed run resumes whatever size it was started with."""
    base, _ = site
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _score(base, db, out) == 0
    capsys.readouterr()
    assert cli.main(["score", f"{base}/posts.jsonl", "--db", str(db), "--out", str(out), "--allow-hosts", "127.0.0.1"]) == 0
    assert "(0 shards scored, 3 already done)" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert cli.main(["score", f"{base}/posts.jsonl", "--db", str(tmp_path / "f.duckdb"), "--out", str(fresh),
                     "--allow-hosts", "127.0.0.1"]) == 0
    assert "(1 shards scored, 0 already done)" in capsys.readouterr().out  # 20 posts: one shard of 512


def test_shards_scored_at_once_stay_within_the_per_host_cap(prefect_harness, image_server, tmp_path):
    """The flow scores two shards at once, but fetches them one after the other: a host never sees more than
    FetchConfig.per_host downloads at a time from one run (two shards' fetches at once made it twice that)."""
    probe = Concurrency(send(200, encode(textured_image(120, 90), "JPEG"), "image/jpeg"), hold=0.1)
    dump = tmp_path / "posts.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"p{n}", "created_at": "2026-11-20", "text": "nice day",
                                        "image_url": image_server.route(f"/i{n}.jpg", probe)}) + "\n" for n in range(48)))
    assert cli.main(["score", str(dump), "--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out"),
                     "--shard-size", "24", "--allow-hosts", "127.0.0.1"]) == 0
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        assert con.sql("SELECT image_status, count(*) FROM post_sentiment GROUP BY 1").fetchall() == [("ok", 48)]
    assert probe.peak == FetchConfig.per_host



def test_the_model_starts_on_a_shards_first_batches_while_its_last_images_download(image_server, tmp_path, monkeypatch):
    """A shard's images are fetched in the model's batch order and handed to it as they arrive: the image of
    the longest text (the shard's first post, but the model's last batch), which the server holds back until
    the model has scored a batch, holds up neither the first batch nor any post."""
    scored = threading.Event()
    forward = Engine.forward
    monkeypatch.setattr(Engine, "forward", lambda self, *a, **k: (forward(self, *a, **k), scored.set())[0])
    seen = []

    def held(request):
        seen.append(scored.wait(timeout=30))  # False if the model waited for this image to start
        send(200, encode(textured_image(64, 48), "JPEG"), "image/jpeg")(request)

    jpeg = send(200, encode(textured_image(80, 60), "JPEG"), "image/jpeg")
    rows = [{"post_id": "long", "created_at": "2026-11-20", "text": "what a day " * 30, "image_url": image_server.route("/held.jpg", held)}]
    rows += [{"post_id": f"p{n:02d}", "created_at": "2026-11-20", "text": f"nice day {n}", "image_url": image_server.route(f"/i{n}.jpg", jpeg)}
             for n in range(70)]
    dump = tmp_path / "posts.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = pipeline.RunOptions(db=str(tmp_path / "m.duckdb"), out=str(tmp_path / "out"), allow_hosts=("127.0.0.1",))
    (shard,) = pipeline.prepare(str(dump), opts).shards

    result = pipeline.score_shard(shard, opts, "run", "key")
    assert seen == [True]
    # Requested among the last (downloads run `workers` at a time, so a few overtake it), though its post is first.
    assert image_server.hits.index("/held.jpg") >= len(rows) - 2 * FetchConfig.workers
    assert result.image_status == {"ok": 71}
    assert result.seconds["infer_wait"] >= 0 and result.seconds["infer"] > 0
    files = [str(tmp_path / "out" / f) for f in result.files]  # named within the output folder
    table = duckdb.sql(f"SELECT post_id, image_label FROM read_parquet({files})").fetchall()
    assert sorted(r[0] for r in table) == sorted(r["post_id"] for r in rows) and all(r[1] for r in table)



@pytest.mark.timeout(120)  # a model left waiting would hang here
def test_a_fetch_that_fails_midway_fails_the_shard_without_leaving_the_model_waiting(image_server, tmp_path, monkeypatch):
    """The model reads the shard's images as they arrive; if the fetch itself raises (a bug, not a bad image:
    those are per-row statuses), the shard fails with that error instead of waiting forever for the rest."""
    import mmsa.images.fetch

    fetch_images = mmsa.images.fetch.fetch_images

    def breaks_after_half(items, *args, on_result, **kwargs):
        items = list(items)
        fetch_images(items[: len(items) // 2], *args, on_result=on_result, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(mmsa.images.fetch, "fetch_images", breaks_after_half)
    jpeg = send(200, encode(textured_image(80, 60), "JPEG"), "image/jpeg")
    dump = tmp_path / "posts.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"p{n}", "created_at": "2026-11-20", "text": f"nice day {n}",
                                        "image_url": image_server.route(f"/i{n}.jpg", jpeg)}) + "\n" for n in range(80)))
    opts = pipeline.RunOptions(db=str(tmp_path / "m.duckdb"), out=str(tmp_path / "out"), allow_hosts=("127.0.0.1",))
    (shard,) = pipeline.prepare(str(dump), opts).shards
    with pytest.raises(OSError, match="disk full"):
        pipeline.score_shard(shard, opts, "run", "key")
    assert sum(image_server.hit_count(f"/i{n}.jpg") for n in range(80)) == 40  # the half before the failure
    assert not list((tmp_path / "out").glob("date=*/*.parquet"))


ANALYST = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for line in sys.stdin:  # each line: one query, answered on the same open connection
    print(con.sql(line).fetchall(), flush=True)
"""


def test_analyst_holding_the_snapshot_open_does_not_block_scoring(prefect_harness, site, tmp_path):
    """An analyst process keeps <db>.analyst.duckdb open; a run publishes a new one without waiting."""
    import subprocess
    import sys

    from mmsa.publish import snapshot_path

    base, _ = site
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _score(base, db, out) == 0
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, str(snapshot_path(db))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ask = lambda sql: (analyst.stdin.write(sql + "\n"), analyst.stdin.flush(), analyst.stdout.readline())[2].strip()  # noqa: E731
    try:
        assert ask("SELECT count(*) FROM runs") == "[(1,)]"
        assert _score(base, db, out, "--force") == 0  # runs while the analyst's connection is open
        assert ask("SELECT count(*), count(DISTINCT post_id) FROM post_sentiment") == "[(20, 20)]"
        assert ask("SELECT count(*) FROM runs") == "[(1,)]"  # still the consistent snapshot it opened
    finally:
        analyst.stdin.close()
        assert analyst.wait(timeout=30) == 0
    with duckdb.connect(str(snapshot_path(db)), read_only=True) as fresh:
        assert fresh.sql("SELECT count(*) FROM runs").fetchall() == [(2,)]
        (run_id,), = fresh.sql("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchall()
    charts = sorted((out / "_reports" / run_id).glob("*.png"))
    assert [c.name for c in charts] == ["spikes.png", "trend.png"] and all(c.stat().st_size > 5000 for c in charts)


def test_unknown_model_fails_with_its_name_and_writes_nothing(prefect_harness, tmp_path, capsys):
    """The model is preloaded in a thread while Prefect starts; a bad name must still fail loudly."""
    dump = tmp_path / "p.jsonl"
    dump.write_text(json.dumps({"post_id": "x1", "created_at": "2026-11-20", "text": "hi"}) + "\n")
    assert cli.main(["score", str(dump), "--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out"),
                     "--model", "no-such-model"]) == 2
    assert "mmsa score: error: no model folder 'no-such-model'" in capsys.readouterr().err
    assert not [p for p in (tmp_path / "out").rglob("*.parquet") if "_work" not in p.parts]  # no result partitions
