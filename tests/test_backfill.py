"""Backfill over day partitions: each day's dump scored once per model version, reruns are no-ops,
--force re-scores without duplicating a row."""

import json
import subprocess
import sys
from datetime import date, datetime, timezone

import duckdb
import prefect.runtime.flow_run
import pytest

from mmsa.flows import backfill
from mmsa.flows.backfill import BackfillFailed, backfill_flow
from mmsa.store import already_scored
from mmsa import cli
from test_deployments import latest_artifact

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def write_day_dumps(folder, days=DAYS, n=12):
    """Text-only dumps (no images to fetch: fast), distinct post ids per day."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in days:
        rows = [{"post_id": f"{d}-{i}", "created_at": f"{d}T{i:02d}:15:00", "brand": "acme",
                 "text": ["love it, great day", "store opens at 9", "awful, broken again"][i % 3]} for i in range(n)]
        (folder / f"{d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "{date}.jsonl")


def _backfill(template, db, out, *extra):
    return cli.main(["backfill", "--dump-template", template, "--from", DAYS[0], "--to", DAYS[-1],
                     "--db", str(db), "--out", str(out), "--shard-size", "8", *extra])


def _counts(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return (con.execute("SELECT count(*), count(DISTINCT (post_id, model_version)) FROM post_sentiment").fetchone(),
                con.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_backfill_scores_each_day_once_and_force_rescores(prefect_harness, tmp_path, capsys):
    """Each day's run records per-shard statistics; a rerun skips every day (no new run, Parquet untouched);
    --force redoes them, still one row per post."""
    template = write_day_dumps(tmp_path / "dumps")
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert _backfill(template, db, out) == 0
    assert _counts(db) == ((36, 36), 3)
    with duckdb.connect(str(db), read_only=True) as con:  # per-shard statistics: 12 posts a day = shards of 8 + 4
        shards = con.execute("SELECT shard, posts, skipped, posts_per_s > 0, image_status->>'no_image' FROM run_shards "
                             "ORDER BY run_id, shard").fetchall()
    assert shards == [(0, 8, False, True, "8"), (1, 4, False, True, "4")] * 3
    markdown = latest_artifact("score-run")
    assert "| 1 | no | 4 | no_image=4 |" in markdown and "| dump | model | posts in |" in markdown
    files = {p: p.stat().st_mtime_ns for p in out.glob("date=*/*.parquet")}
    assert sorted({p.parent.name for p in files}) == [f"date={d}" for d in DAYS]

    capsys.readouterr()
    assert _backfill(template, db, out) == 0
    assert capsys.readouterr().out.count("skipped") >= 3
    assert _counts(db) == ((36, 36), 3)
    assert {p: p.stat().st_mtime_ns for p in out.glob("date=*/*.parquet")} == files

    assert _backfill(template, db, out, "--force") == 0
    assert _counts(db) == ((36, 36), 6)
    assert sorted(out.glob("date=*/*.parquet")) == sorted(files)
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT post_id) FROM read_parquet('{out}/date=*/*.parquet')").fetchall() == [(36, 36)]

    late = tmp_path / "dumps" / f"{DAYS[1]}.jsonl"  # the day's whole dump arrives after a partial one was scored
    late.write_text(late.read_text() + json.dumps({"post_id": "late-1", "created_at": f"{DAYS[1]}T23:00:00",
                                                   "text": "acme, late but fine"}) + "\n")
    capsys.readouterr()
    assert _backfill(template, db, out) == 0
    assert capsys.readouterr().out == f"{DAYS[0]}  skipped\n{DAYS[1]}  scored\n{DAYS[2]}  skipped\n"
    assert _counts(db) == ((37, 37), 7)

    # a brand added to the brands file: every day is read otherwise, so none is done (they were skipped: no rows)
    brands = tmp_path / "brands.yaml"
    brands.write_text("globex:\n  keywords: [store]\n")
    assert _backfill(template, db, out, "--brands", str(brands)) == 0
    assert capsys.readouterr().out.count("scored") == 3
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT post_id) FROM post_sentiment WHERE brand = 'globex'").fetchone() == (12,)
    assert _backfill(template, db, out, "--brands", str(brands)) == 0
    assert capsys.readouterr().out.count("skipped") == 3


def test_a_nightly_run_scores_the_day_before_its_scheduled_start_not_before_today(prefect_harness, tmp_path, monkeypatch):
    """Two nights' runs started late (a worker down, then back the next morning) both scored today's yesterday:
    the first night's day was never scored. Each scores the day before its own schedule, in its time zone."""
    template = write_day_dumps(tmp_path / "dumps")
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    for night, day in ((2, DAYS[0]), (3, DAYS[1])):  # scheduled at 02:30 in New York
        scheduled = datetime(2026, 11, night, 7, 30, tzinfo=timezone.utc)
        monkeypatch.setitem(prefect.runtime.flow_run.FIELDS, "scheduled_start_time", lambda at=scheduled: at)
        assert backfill_flow(dump_template=template, db=str(db), out=str(out), timezone="America/New_York",
                             shard_size=8) == {day: "scored"}
    assert sorted(p.name for p in out.glob("date=*")) == [f"date={d}" for d in DAYS[:2]]


def test_a_backfill_rerun_publishes_the_snapshot_a_killed_run_did_not(prefect_harness, tmp_path):
    """Killed while copying the snapshot, a day's run had committed its load: the rerun skips the day as done, and
    the snapshot lacked it for good (or was missing), beside the dead copy's temporary file. Now the rerun publishes."""
    from mmsa import publish

    template = write_day_dumps(tmp_path / "dumps", n=3)
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    assert cli.main(["backfill", "--dump-template", template, "--from", DAYS[0], "--to", DAYS[0],
                     "--db", str(db), "--out", str(out)]) == 0
    stale = publish.snapshot_path(db).read_bytes()  # one day
    assert cli.main(["backfill", "--dump-template", template, "--from", DAYS[0], "--to", DAYS[1],
                     "--db", str(db), "--out", str(out)]) == 0
    publish.snapshot_path(db).write_bytes(stale)  # the second day's publish killed: the old snapshot stays
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".m.analyst.duckdb.{dead.stdout.strip()}-1.tmp"
    leftover.write_bytes(stale)
    assert cli.main(["backfill", "--dump-template", template, "--from", DAYS[0], "--to", DAYS[1],
                     "--db", str(db), "--out", str(out)]) == 0
    with duckdb.connect(str(publish.snapshot_path(db)), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM post_sentiment").fetchone() == (6,)
    assert not leftover.exists()
    before = publish.snapshot_path(db).stat().st_mtime_ns
    assert publish.publish_if_behind(db) is None and publish.snapshot_path(db).stat().st_mtime_ns == before


def test_backfill_reports_missing_day_after_scoring_the_others(prefect_harness, tmp_path, capsys):
    """A missing dump fails the backfill (nightly alerting) but does not stop the other days; the command prints
    every day's outcome, then what failed in one line (exit 1), no traceback."""
    template = write_day_dumps(tmp_path / "dumps", days=[DAYS[0], DAYS[2]])
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    with pytest.raises(BackfillFailed, match=r"1 of 3 days failed: 2026-11-02 \(dump not found: "):
        backfill_flow(dump_template=template, db=str(db), out=str(out), start=date(2026, 11, 1),
                      end=date(2026, 11, 3), shard_size=8)
    assert _counts(db) == ((24, 24), 2)
    capsys.readouterr()
    assert _backfill(template, db, out) == 1
    printed = capsys.readouterr()
    assert "2026-11-01  skipped\n2026-11-02  failed\n2026-11-03  skipped" in printed.out
    assert printed.err.splitlines()[-1].startswith("mmsa backfill: error: 1 of 3 days failed: 2026-11-02 (dump not")
    assert "Traceback" not in printed.err


def test_a_template_without_its_date_field_or_an_unknown_model_is_one_line_before_prefect(tmp_path, capsys):
    """Checked before any flow starts (no Prefect harness here: nothing may need it)."""
    common = ["--from", "2026-11-01", "--db", str(tmp_path / "m.duckdb"), "--out", str(tmp_path / "out")]
    for template in ("x/{day}.jsonl", "x/posts.jsonl"):  # the second: every day the same file, all but one "done"
        assert cli.main(["backfill", "--dump-template", template, *common]) == 2
        assert capsys.readouterr().err == (f"mmsa backfill: error: dump template '{template}' has no {{date}} field: its "
                                           "one field is {date}, e.g. /data/dumps/{date}.jsonl or {date:%Y/%m/%d}.jsonl\n")
    assert cli.main(["backfill", "--dump-template", "x/{date!z}.jsonl", *common]) == 2
    assert "cannot be filled (ValueError: Unknown conversion specifier z)" in capsys.readouterr().err
    assert cli.main(["backfill", "--dump-template", "x/{date}.jsonl", *common, "--model", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("mmsa backfill: error: no model folder 'nosuch'")
    for zone in ("Europe/Berln", "Europe"):  # a traceback twice, exit 1, even with both dates given
        with pytest.raises(SystemExit) as exit_:
            cli.main(["backfill", "--dump-template", "x/{date}.jsonl", *common, "--timezone", zone])
        assert exit_.value.code == 2 and f"unknown time zone '{zone}'" in capsys.readouterr().err
    assert cli.main(["backfill", "--dump-template", "x/{date}.jsonl", *common[2:], "--from", "2999-01-01"]) == 2
    assert "end" in capsys.readouterr().err  # --from alone runs to yesterday: a future day is no range
    assert not (tmp_path / "m.duckdb").exists()


def test_one_bound_of_a_range():
    """`--from` alone scored that one day: an operator catching up after downtime got one day of many. It runs to
    yesterday; `--to` alone is that day; neither, yesterday."""
    yesterday = date(2026, 11, 30)
    assert backfill.day_range(date(2026, 11, 27), None, yesterday) == (date(2026, 11, 27), yesterday)
    assert backfill.day_range(None, date(2026, 11, 2), yesterday) == (date(2026, 11, 2), date(2026, 11, 2))
    assert backfill.day_range(None, None, yesterday) == (yesterday, yesterday)
    at = datetime(2026, 12, 1, 3, tzinfo=timezone.utc)  # 22:00 on 30 November in New York
    assert (backfill.day_before(at, "UTC"), backfill.day_before(at, "America/New_York")) == (yesterday, date(2026, 11, 29))


LOCK_PROBE = """
import fcntl, sys
with open(sys.argv[1], "a") as fh:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
"""


def test_a_backfill_holds_its_database_from_its_first_day_to_its_last(prefect_harness, tmp_path, monkeypatch):
    """Another process cannot take the database between two days (a second backfill let in there stopped the first
    at its next day); the days' own runs, in this process, still take it."""
    template = write_day_dumps(tmp_path / "dumps")
    db, out = tmp_path / "m.duckdb", tmp_path / "out"
    probes = []

    def probing(db_path, dump, model_version, key, reading):  # before each day: can another process take the lock now?
        probe = subprocess.run([sys.executable, "-c", LOCK_PROBE, f"{db_path}.lock"])
        probes.append(probe.returncode)
        return already_scored(db_path, dump, model_version, key, reading)

    monkeypatch.setattr(backfill, "already_scored", probing)
    assert backfill.backfill_flow(dump_template=template, db=str(db), out=str(out), start=date(2026, 11, 1),
                                  end=date(2026, 11, 3), shard_size=8) == {d: "scored" for d in DAYS}
    assert probes == [3, 3, 3] and _counts(db) == ((36, 36), 3)
    assert subprocess.run([sys.executable, "-c", LOCK_PROBE, f"{db}.lock"]).returncode == 0  # released at the end

