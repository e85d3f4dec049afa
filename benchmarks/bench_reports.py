"""Time every SQL report, the HTML summary, the headline and each dashboard view over a generated scored_posts table.

The table is generated inside DuckDB (range() and random() seeded by setseed): N posts over one year stored in time order (as nightly loads leave them), 10 brands with
skewed volume, one planted negative spike,
80% with an image, heavy-tailed engagement, a second (older) model version on 1% of the posts,
one run per day and some rejected rows. Each report runs 3 times through a fresh read-only
connection each (as the CLI does) and 3 times on one open connection; medians are recorded,
with the HTML summary, the headline, a chart and the analyst snapshot's publishing. Each dashboard
view is requested through mmsa.dashboard.server.Dashboard.handle (its queries and its HTML, no socket) on the
published snapshot: once first, which also fills what the dashboard keeps per snapshot (model versions,
filter options), then 3 more times; the time inside its SQL queries is counted apart.

    .venv/bin/python benchmarks/bench_reports.py                 # 10M rows -> benchmarks/results/reports.md
    .venv/bin/python benchmarks/bench_reports.py --rows 1000000 --out /tmp/r.md
    .venv/bin/python benchmarks/bench_reports.py --views-only    # only the dashboard section of the results
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

import duckdb

from mmsa import charts, publish, report, store
from mmsa.dashboard.server import Dashboard

GENERATE = """
SELECT setseed(0.42);
-- Rows are stored in time order, as nightly runs load them.
INSERT INTO scored_posts
WITH draws AS (
    SELECT
        i,
        CASE WHEN i < 20000 THEN 'acme'  -- the planted spike: 20k acme posts on 2025-06-15
             ELSE (['acme', 'globex', 'initech', 'umbrella', 'hooli', 'stark', 'wayne', 'wonka',
                    'cyberdyne', 'soylent'])[1 + CAST(floor(pow(random(), 2) * 10) AS INTEGER)] END AS brand,
        CASE WHEN i < 20000 THEN TIMESTAMPTZ '2025-06-15 08:00:00+00' + to_seconds(CAST(random() * 40000 AS BIGINT))
             ELSE TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_seconds(CAST(random() * 365 * 86400 AS BIGINT)) END AS created_at,
        CASE WHEN i < 20000 THEN 0.95 ELSE random() END AS u_label,
        random() AS u_image,
        random() AS u_agree,
        0.5 + 0.5 * random() AS top_p,
        random() AS u_split,
        random() AS u_engagement
    FROM range($rows) t(i)
),
labelled AS (
    SELECT
        *,
        CASE WHEN u_label < 0.45 THEN 'positive' WHEN u_label < 0.75 THEN 'neutral' ELSE 'negative' END AS lbl,
        CASE WHEN u_image >= 0.8 THEN 'no_image' WHEN u_image >= 0.77 THEN 'http_404'
             WHEN u_image >= 0.76 THEN 'timeout' ELSE 'ok' END AS status
    FROM draws
),
probs AS (
    SELECT
        *,
        CASE lbl WHEN 'positive' THEN top_p ELSE (1 - top_p) * u_split END AS pp,
        CASE lbl WHEN 'neutral' THEN top_p
                 WHEN 'positive' THEN (1 - top_p) * u_split ELSE (1 - top_p) * (1 - u_split) END AS pn,
        CASE lbl WHEN 'negative' THEN top_p ELSE (1 - top_p) * (1 - u_split) END AS pg,
        CASE WHEN status <> 'ok' THEN NULL WHEN u_agree < 0.85 THEN lbl
             ELSE (['positive', 'neutral', 'negative'])[1 + CAST(floor(u_agree * 1000) AS INTEGER) % 3] END AS img
    FROM labelled
),
images AS (
    SELECT
        *,
        CASE img WHEN 'positive' THEN 0.8 WHEN 'neutral' THEN 0.1 WHEN 'negative' THEN 0.05 END AS ip,
        CASE img WHEN 'positive' THEN 0.15 WHEN 'neutral' THEN 0.8 WHEN 'negative' THEN 0.15 END AS in_,
        CASE img WHEN 'positive' THEN 0.05 WHEN 'neutral' THEN 0.1 WHEN 'negative' THEN 0.8 END AS ig
    FROM probs
)
SELECT
    'p' || i, created_at, 'post ' || i || ' about ' || brand,
    CASE WHEN status <> 'no_image' THEN ['https://cdn.example/' || i || '.jpg'] ELSE [] END,
    [brand],
    (['twitter', 'instagram', 'reddit', 'tiktok', 'facebook'])[1 + i % 5],
    (['en', 'en', 'en', 'de', 'fr', 'es'])[1 + i % 6],
    'user' || (i % 100000),
    CAST(floor(pow(u_engagement, 4) * 10000) AS BIGINT),
    CAST(floor(pow(u_engagement, 4) * 1000) AS BIGINT),
    CASE WHEN i % 10 = 0 THEN NULL ELSE CAST(floor(pow(u_engagement, 4) * 300) AS BIGINT) END,
    NULL,
    status, lbl, pp, pn, pg, pp - pg,
    lbl, pp, pn, pg,
    img, ip, in_, ig,
    CASE WHEN status = 'no_image' THEN [] ELSE [{position: 0, image_url: 'https://cdn.example/' || i || '.jpg',
        image_status: status, image_label: img, image_p_positive: ip, image_p_neutral: in_, image_p_negative: ig}] END,
    'v2', 'run-' || strftime(created_at, '%Y%m%d'), created_at + INTERVAL 1 DAY
FROM images
ORDER BY created_at;
-- An older model version on 1% of the posts: the reports must skip it by default.
INSERT INTO scored_posts
SELECT * REPLACE ('v1' AS model_version, 'run-v1' AS run_id, scored_at - INTERVAL 400 DAY AS scored_at)
FROM scored_posts WHERE hash(post_id) % 100 = 0;
INSERT INTO runs
SELECT run_id, 'dump-' || run_id || '.jsonl', any_value(model_version), min(scored_at) - INTERVAL 20 MINUTE,
       min(scored_at), count(*) + 30, count(*), 30, '{"ok": 1}', '{"infer": 60.0}', NULL
FROM scored_posts GROUP BY run_id;
INSERT INTO rejected_posts
SELECT NULL, 'missing post_id', '{"brand": "acme"}', 'dump-' || run_id || '.jsonl', n, run_id, finished_at, NULL
FROM runs, range(30) t(n);
CHECKPOINT;
"""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}"


def timed(fn, runs: int = 3) -> tuple[float, list[float], float, object]:
    """Median wall seconds, each run's wall seconds, median CPU seconds (all threads), last result."""
    times, cpu, result = [], [], None
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), times, statistics.median(cpu), result


def fmt(times: list[float]) -> str:
    return " / ".join(f"{t:.2f}" for t in times)


# The view as the store defines it computes `day` with an ICU time-zone cast per row; this
# variant computes the same UTC day from the epoch (timed as a proposal, see results).
LAST_WEEK = "2025-12-25"  # the generated year ends 2025-12-31: `--from` for the last 7 days
EPOCH_DAY_VIEW = """
CREATE OR REPLACE VIEW post_sentiment AS
SELECT * EXCLUDE (brands, images),
       unnest(CASE WHEN coalesce(len(brands), 0) = 0 THEN [NULL::VARCHAR] ELSE brands END) AS brand,
       DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER) AS day
FROM scored_posts
"""


# The dashboard's views as an analyst opens them: the whole year, one brand, one day, filters.
VIEWS = [
    ("overview, all brands, the year (auto: per week)", "/"),
    ("overview, all brands, the year per day", "/?period=day"),
    ("overview, acme, December per day", "/?brand=acme&date_from=2025-12-01&date_to=2025-12-31"),
    ("overview, reddit posts in German", "/?source=reddit&lang=de"),
    ("spikes, all brands, the year", "/spikes"),
    ("spikes, acme", "/spikes?brand=acme"),
    ("posts of a day (acme, the spike day)", "/posts?brand=acme&date_from=2025-06-15&date_to=2025-06-15"),
    ("share of voice, the year per week", "/voice"),
    ("text vs image: rates and gallery", "/disagreement"),
    ("data quality", "/quality"),
    ("CSV of the daily trend, all brands", "/csv/trend?period=day"),
]


class QueryClock:
    """Seconds spent inside report.run_sql (every query of the dashboard goes through it)."""

    def __init__(self):
        self.seconds = 0.0
        self._run_sql = report.run_sql

    def __enter__(self):
        def timed_run_sql(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._run_sql(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        report.run_sql = timed_run_sql
        return self

    def __exit__(self, *exc):
        report.run_sql = self._run_sql


def time_views(snapshot: Path) -> list[str]:
    """One table row per dashboard view: first request, median of 3 more, CPU, time in SQL, page size."""
    lines = []
    t0, c0 = time.perf_counter(), time.process_time()
    app = Dashboard(snapshot)
    with QueryClock() as clock:
        first = app.handle("/", {})
    assert first.status == 200, first.body[:500]
    lines.append(f"| opening the snapshot + first overview (fills the per-snapshot lists) | {time.perf_counter() - t0:.2f} "
                 f"| | {time.process_time() - c0:.2f} | {clock.seconds:.2f} | {len(first.body) / 1024:.0f} | |")
    print(lines[-1], flush=True)
    for label, url in VIEWS:
        path, _, query = url.partition("?")
        params = parse_qs(query)
        t0 = time.perf_counter()
        response = app.handle(path, params)
        once = time.perf_counter() - t0
        assert response.status == 200, (url, response.body[:500])
        with QueryClock() as clock:
            median, times, cpu, response = timed(lambda: app.handle(path, params))
        lines.append(f"| {label}: `{url}` | {once:.2f} | {median:.2f} | {cpu:.2f} | {clock.seconds / 3:.2f} "
                     f"| {len(response.body) / 1024:.0f} | {fmt(times)} |")
        print(lines[-1], flush=True)
    return lines


def views_section(lines: list[str], total: int, load: tuple[float, float], command: str) -> list[str]:
    return [
        "## Dashboard views (`mmsa dashboard`)",
        "",
        f"- What: each view of the dashboard on the published snapshot of the same {total:,} rows.",
        f"- Machine: {machine()}; DuckDB {duckdb.__version__}, Python {platform.python_version()}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d}.",
        f"- Command: `{command}`",
        f"- Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores (shared machine).",
        "- Method: each view through `Dashboard.handle` (its SQL and its HTML, no socket). *first*: one",
        "  request; *median*: of 3 more (the runs beside it); *CPU s*: their median CPU seconds (all DuckDB",
        "  threads of this process); *in SQL*: mean seconds of those 3 spent in the view's queries.",
        "",
        "| view | first | median | CPU s | in SQL | KiB | runs |",
        "|---|---:|---:|---:|---:|---:|---|",
        *lines,
    ]


def replace_section(path: Path, heading: str, section: list[str]) -> str:
    """The file's text with the `## heading...` section (to the next `## `) replaced by `section`, or appended."""
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start] + section + ([""] + lines[end:] if end < len(lines) else [])) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reports.md")
    parser.add_argument("--views-only", action="store_true",
                        help="time only the dashboard views; replace only their section of --out")
    args = parser.parse_args()
    names = [name for name, _ in report.list_reports()]
    command = f"{Path(sys.executable).name} benchmarks/bench_reports.py" + (
        f" --rows {args.rows}" if args.rows != 10_000_000 else "")

    with tempfile.TemporaryDirectory(prefix="mmsa-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        with store.connect(db) as con:
            for statement in filter(str.strip, GENERATE.split(";\n")):
                con.execute(statement, {"rows": args.rows} if "$rows" in statement else {})
            (total,) = con.execute("SELECT count(*) FROM scored_posts").fetchone()
        generate_s = time.perf_counter() - t0
        print(f"generated {total:,} rows in {generate_s:.1f} s ({db.stat().st_size / 2**30:.2f} GiB)", flush=True)

        if args.views_only:
            snapshot = publish.publish_snapshot(db)
            load_before = os.getloadavg()
            view_lines = time_views(snapshot)
            section = views_section(view_lines, total, (load_before[0], os.getloadavg()[0]), command + " --views-only")
            args.out.write_text(replace_section(args.out, "## Dashboard views", section))
            print(f"wrote {args.out}")
            return 0

        load_before = os.getloadavg()
        lines = []
        for name in names:
            cold, cold_times, _, table = timed(lambda: report.run_report(name, db))
            with report.connect(db) as con:
                warm, warm_times, warm_cpu, _ = timed(lambda: report.run_report(name, con))
                week, _, week_cpu, _ = timed(lambda: report.run_report(name, con, date_from=LAST_WEEK))
            lines.append(f"| {name} | {table.num_rows} | {cold:.2f} | {warm:.2f} | {warm_cpu:.2f} | {week:.2f} "
                         f"| {week_cpu:.2f} | {fmt(cold_times)} | {fmt(warm_times)} |")
            print(lines[-1], flush=True)
        for label, fn, runs in [
            ("`--chart` sentiment_spikes", lambda: charts.render_chart("sentiment_spikes", db, Path(tmp) / "s.png"), 3),
            ("headline_markdown", lambda: report.headline_markdown(db), 3),
            ("publish_snapshot (CHECKPOINT, copy, rename)", lambda: publish.publish_snapshot(db), 3),
            ("`report all --html` (1 run)", lambda: charts.html_summary(db, Path(tmp) / "all.html"), 1),
        ]:
            cold, cold_times, cpu, _ = timed(fn, runs)
            lines.append(f"| {label} | | {cold:.2f} | | {cpu:.2f} | | | {fmt(cold_times)} | |")
            print(lines[-1], flush=True)
        load_after = os.getloadavg()

        view_load = os.getloadavg()[0]
        view_lines = time_views(publish.snapshot_path(db))  # published above, by the publish_snapshot timing
        view_load = (view_load, os.getloadavg()[0])

        with duckdb.connect(str(db)) as con:
            con.execute(EPOCH_DAY_VIEW)
        epoch_lines = []
        with report.connect(db) as con:
            for name in names:
                warm, warm_times, warm_cpu, _ = timed(lambda: report.run_report(name, con))
                epoch_lines.append(f"| {name} | {warm:.2f} | {warm_cpu:.2f} | {fmt(warm_times)} |")
                print(epoch_lines[-1], flush=True)

    text = [
        "# Report timings over a generated table",
        "",
        f"- Rows in `scored_posts`: {total:,} ({args.rows:,} posts of model v2 + 1% rescored by an older v1, "
        "which the reports skip); 10 brands, one year, one planted spike.",
        f"- Machine: {machine()}",
        f"- DuckDB {duckdb.__version__}, Python {platform.python_version()}; table generated in {generate_s:.1f} s.",
        f"- Command: `{command}`",
        f"- Load average (1 min) before / after the report timings: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "on 2 cores: the machine is shared, so wall times include waiting for other processes;",
        "  CPU seconds (all DuckDB threads of this process) do not.",
        "- Seconds, median of 3 runs (the runs beside it). *cold*: each run opens a fresh read-only",
        "  connection, as `mmsa report` does (DuckDB's block cache starts empty; the OS page cache is",
        "  warm); *warm*: 3 runs on one open connection, as in a Python or DuckDB session. *all days*:",
        "  default parameters (all brands, the whole year); *last 7 days*: `--from " + LAST_WEEK + "`.",
        "",
        "| report | rows out | cold, all days | warm, all days | warm CPU s | warm, last 7 days | its CPU s | cold runs | warm runs |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
        *lines,
        "",
        "## With `day` computed from the epoch instead of an ICU cast",
        "",
        "Same data, the view redefined as `DATE '1970-01-01' + CAST(epoch_us(created_at) // 86400000000 AS INTEGER)`",
        "(the same UTC day, without a time-zone cast per row); warm runs:",
        "",
        "| report | warm, all days | warm CPU s | warm runs |",
        "|---|---:|---:|---|",
        *epoch_lines,
        "",
        *views_section(view_lines, total, view_load, command),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
