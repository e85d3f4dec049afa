"""Run the SQL reports in sql/reports against a DuckDB database, and the nightly headline.

Each report is one .sql file whose header comment says what it answers and its parameters.
Parameters are bound by DuckDB (`$name`), never pasted into the SQL text; a parameter left out
is bound as NULL, which every report reads as "no filter" or "the default".

A report whose SQL returns the column `probabilities` (one row per group of posts, each post's class
probabilities in LABELS order) and `quantification` (the model's statistics, JSON) is finished here: the
two columns become the group's estimated shares with their 95% intervals and the `method` (mmsa.quantify),
since a bootstrap is no SQL aggregate. The SQL chooses the rows and the groups; the estimate is the same
for every such report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import date, datetime
from pathlib import Path
from typing import Callable, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from mmsa import quantify, store
from mmsa.files import package_dir
from mmsa.publish import snapshot_path
from mmsa.schema import LABELS

REPORTS_DIR = package_dir("mmsa.sql") / "reports"
# The filters every report accepts (CLI: --brand, --from, --to, --param model_version=...).
FILTERS = ("brand", "date_from", "date_to", "model_version")
FORMATS = ("table", "csv", "json")


def _path(name: str) -> Path:
    path = REPORTS_DIR / f"{name}.sql"
    if not re.fullmatch(r"[a-z0-9_]+", name) or not path.is_file():
        known = ", ".join(n for n, _ in list_reports())
        raise ValueError(f"unknown report {name!r}; known: {known}")
    return path


def _header(sql: str) -> list[str]:
    lines = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    return lines


def list_reports() -> list[tuple[str, str]]:
    """(name, what it is) for every report file, from the first header line."""
    out = []
    for path in sorted(REPORTS_DIR.glob("*.sql")):
        first = _header(path.read_text())[0]
        out.append((path.stem, first.split(":", 1)[-1].strip()))
    return out


def describe(name: str) -> str:
    """The report's whole header comment: what it answers and its parameters."""
    return "\n".join(_header(_path(name).read_text()))


def sql_parameters(sql: str) -> list[str]:
    """The `$name` parameters an SQL text binds (comments ignored), sorted."""
    code = re.sub(r"--[^\n]*", "", sql)
    return sorted(set(re.findall(r"\$([A-Za-z_]\w*)", code)))


def parameters(name: str) -> list[str]:
    """The `$name` parameters the report's SQL binds (comments ignored), sorted."""
    return sql_parameters(_path(name).read_text())


def connect(db: str | Path) -> duckdb.DuckDBPyConnection:
    """Open a database read-only for reports, with days counted in UTC (the view's `day`)."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no DuckDB database at {db}")
    not_mmsa = f"{db} is not a database mmsa score wrote: give the --db of the scoring runs"
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        if "not a valid DuckDB database file" in str(exc):
            raise ValueError(f"{not_mmsa} (not a DuckDB file)") from None
        raise ValueError(  # another process has it open read-write: the pipeline
            f"cannot open {db} while another process writes it ({str(exc).splitlines()[0]}); "
            f"read the analyst snapshot {snapshot_path(db)} instead (docs/analysts.md)"
        ) from exc
    except duckdb.Error:  # a JSON or CSV file, which DuckDB reads as a query of its own
        raise ValueError(f"{not_mmsa} (not a DuckDB file)") from None
    columns = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'").fetchall()}
    if not columns:
        con.close()
        raise ValueError(f"{not_mmsa} (a DuckDB database without mmsa's tables)")
    missing = [(name, kind) for name, kind in store.RUNS_ADDED if name not in columns]
    if missing:  # written before those columns were: read as NULL (a read-only connection cannot add them)
        catalog = con.execute("SELECT current_database()").fetchone()[0].replace('"', '""')
        con.execute(f'CREATE TEMP VIEW runs AS SELECT *, {", ".join(f"NULL::{k} AS {n}" for n, k in missing)} '
                    f'FROM "{catalog}".main.runs')
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def empty_hint(db: str | Path, params: dict) -> str | None:
    """Why a report filtered on a brand or a model version can come back empty: no post has that brand (names
    match exactly, as the brands file spells them) or no post was scored by that model; None when both are there."""
    brand, version = params.get("brand"), params.get("model_version")
    with connect(db) as con:
        brands = [b for (b,) in con.sql("SELECT DISTINCT brand FROM post_sentiment WHERE brand IS NOT NULL "
                                        "ORDER BY brand").fetchall()]
        versions = [v for (v,) in con.sql("SELECT DISTINCT model_version FROM scored_posts ORDER BY 1").fetchall()]
    if version is not None and version not in versions:
        return f"no post was scored by model {version!r} (models here: {', '.join(versions) or 'none'})"
    if brand is None or brand in brands:
        return None
    close = [b for b in brands if b.casefold() == brand.casefold()]
    return (f"no post has brand {brand!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (brands here, matched exactly: {', '.join(brands) or 'none'})")


def run_report(name: str, db: str | Path | duckdb.DuckDBPyConnection, **params: object) -> pa.Table:
    """Run report `name` on `db` (a path, opened read-only, or an open connection).

    Parameters the report does not use raise ValueError when set (a typo must not silently
    mean "no filter"); the ones left out are bound as NULL."""
    return run_sql(_path(name).read_text(), db, f"report {name!r}", **params)


COUNTS = {"limit", "top", "window"}  # parameters that count rows or days: 0 or less would mean nothing to show


def run_sql(sql: str, db: str | Path | duckdb.DuckDBPyConnection, what: str, **params: object) -> pa.Table:
    """Run one SQL text the way run_report runs a report (`what` names it in errors); for the
    queries of other readers of the pack, such as the dashboard's sql/dashboard/."""
    wanted = sql_parameters(sql)
    unknown = sorted(k for k, v in params.items() if v is not None and k not in wanted)
    if unknown:
        raise ValueError(f"{what} has no parameter {', '.join(unknown)}; it takes: {', '.join(wanted)}")
    bound = {key: params.get(key) for key in wanted}
    for key in COUNTS & {k for k, v in bound.items() if v is not None}:
        if not str(bound[key]).strip().isdigit() or int(bound[key]) < 1:
            raise ValueError(f"{what}: {key} must be a whole number of at least 1, got {bound[key]!r}")
    if bound.get("threshold") is not None:  # nan or inf would find no spike, silently
        try:
            threshold = float(bound["threshold"])
        except ValueError:
            threshold = float("nan")
        if not math.isfinite(threshold):
            raise ValueError(f"{what}: threshold must be a z-score (a finite number), got {bound['threshold']!r}")
    _check_range(what, bound.get("date_from"), bound.get("date_to"))
    try:
        if isinstance(db, duckdb.DuckDBPyConnection):
            table = db.sql(sql, params=bound).to_arrow_table()
        else:
            with connect(db) as con:
                table = con.sql(sql, params=bound).to_arrow_table()
    except duckdb.ConversionException as exc:  # a parameter value of the wrong type, e.g. --from 2024-13-01
        raise ValueError(f"{what}: bad parameter value: {str(exc).splitlines()[0]}") from exc
    except duckdb.InvalidInputException as exc:  # the SQL's own error(): a parameter outside its choices
        raise ValueError(f"{what}: {str(exc).splitlines()[0].removeprefix('Invalid Input Error: ')}") from exc
    return estimate_shares(table) if "probabilities" in table.column_names else table


def _check_range(what: str, first: object, last: object) -> None:
    """A from-day after the to-day selects nothing: said, not answered with empty tables that pass for no data."""
    try:
        first, last = (date.fromisoformat(str(v).strip()[:10]) for v in (first, last))
    except ValueError:  # one of them unset (None), or not a day: DuckDB says which
        return
    if first > last:
        raise ValueError(f"{what}: date_from {first} is after date_to {last}")


# The columns that replace `probabilities`, in order; `method` goes last.
ESTIMATE_COLUMNS = [f"{name}{end}" for name in (*(f"{lab}_share" for lab in LABELS), "net_sentiment")
                    for end in ("", "_low", "_high")]


def estimate_shares(table: pa.Table) -> pa.Table:
    """Each row's `probabilities` and `quantification` replaced by the estimated shares (and net sentiment)
    with their 95% bootstrap intervals (mmsa.quantify.shares_with_intervals), `method` appended."""
    stats_col = table.column("quantification").to_pylist() if "quantification" in table.column_names else None
    estimates = []
    for i, probs in enumerate(table.column("probabilities").to_pylist()):
        stats = quantify.stats_from_json(stats_col[i]) if stats_col else None
        estimates.append(quantify.shares_with_intervals(np.array(probs or [], dtype=float).reshape(-1, len(LABELS)), stats))
    names = table.column_names
    at = names.index("probabilities")
    columns = {c: table.column(c) for c in names[:at] if c != "quantification"}
    columns |= {c: pa.array([e[c] for e in estimates], pa.float64()) for c in ESTIMATE_COLUMNS}
    columns |= {c: table.column(c) for c in names[at + 1:] if c != "quantification"}
    columns["method"] = pa.array([e["method"] for e in estimates], pa.string())
    return pa.table(columns)


def cell(value: object, precise: bool) -> str:
    """One value as text: NULL empty, floats to 4 decimals (or exact), dates ISO, nested as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if precise else f"{value:.4f}"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def format_table(table: pa.Table, max_width: int = 60) -> str:
    """A fixed-width rendering for terminals: floats to 4 decimals, long cells cut."""
    cols = table.column_names
    rows = []
    for row in table.to_pylist():
        cells = [cell(v, precise=False).replace("\n", " ") for v in row.values()]
        rows.append([c if len(c) <= max_width else c[: max_width - 1] + "…" for c in cells])
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def format_csv(table: pa.Table) -> str:
    """CSV with a header row; floats at full precision, NULL as an empty field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([cell(v, precise=True) for v in row.values()])
    return buf.getvalue()


def format_json(table: pa.Table) -> str:
    """A JSON array of row objects; dates and timestamps as ISO 8601 strings."""
    return json.dumps(table.to_pylist(), default=lambda v: v.isoformat(), indent=1, ensure_ascii=False)


def format_result(table: pa.Table, fmt: str) -> str:
    """Render a report result as table, csv or json."""
    formatters = {"table": format_table, "csv": format_csv, "json": format_json}
    if fmt not in formatters:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return formatters[fmt](table)


class Headline(NamedTuple):
    markdown: str
    charts: list[Path]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def _share(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}%}"


def brand_name(name: str | None) -> str:
    """A brand as shown: posts without one are "(no brand)" (reports, charts, the dashboard)."""
    return "(no brand)" if name is None else name


_MARKDOWN = re.compile(r"([\\`*_\[\]|<>~])")


def _md(value: object) -> str:
    """A dump's words (a brand, a post, a path) as markdown text: on one line, its markup escaped, so that a post's
    `|` does not cut the table and its `![](url)` or `<b>` is shown, not rendered."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(value).split()))


def headline_markdown(db: str | Path, run_id: str | None = None,
                      draw: Callable[[], list[Path]] | None = None) -> Headline:
    """The nightly headline as markdown: the run (latest unless `run_id`), each brand's last
    7 days against the 7 before, the spikes of those days and the text/image disagreement.
    `draw` renders its charts when there is something to draw (mmsa.charts.headline passes it, so
    that this module does not import the charts)."""
    with connect(db) as con:
        runs = run_report("runs", con).to_pylist()
        run = next((r for r in reversed(runs) if run_id in (None, r["run_id"])), None)
        if run is None:
            return Headline(f"# mmsa headline\n\nNo run {run_id or ''} recorded in `{db}`.\n", [])
        pop = run_report("period_over_period", con).to_pylist()
        lines = [
            f"# mmsa headline: run `{run['run_id']}`",
            "",
            f"Dump {_md(run['dump'])}, model `{run['model_version']}`: {run['posts_in']} posts in, "
            f"{run['posts_scored']} scored"
            + (f" + {run['posts_unscored']} stored unscored" if run["posts_unscored"] else "")
            + (f", {before} already stored" if (before := run["posts_in"] - run["posts_rejected"] - run["posts_scored"]
                                                - run["posts_unscored"]) else "")
            + f", {run['posts_rejected']} rejected, in {run['seconds']:.0f} s. "
            f"Images: {', '.join(f'{k}={v}' for k, v in sorted(json.loads(run['image_status'] or '{}').items())) or 'none'}.",
        ]
        not_covered = sorted(json.loads(run["not_covered"] or "{}").items(), key=lambda kv: (-kv[1], kv[0]))
        if not_covered:  # stored unlabelled, left out of the sentiment figures below
            lines[-1] += (f" Not scored, in languages the model does not cover: "
                          f"{', '.join(f'{lang} {n}' for lang, n in not_covered)}.")
        if not pop:
            return Headline("\n".join(lines + ["", "No scored posts yet."]) + "\n", [])
        week = {"date_from": pop[0]["period_from"], "date_to": pop[0]["period_to"]}
        lines += [
            "",
            f"## {week['date_from']} .. {week['date_to']} against the 7 days before",
            "",
            "| brand | posts | change | net sentiment | change | negative share | change |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(pop, key=lambda r: -r["posts"]):
            lines.append(
                f"| {_md(brand_name(r['brand']))} | {r['posts']} | {_pct(r['posts_change_pct'])} | {_num(r['net_sentiment'])} "
                f"| {_num(r['net_sentiment_change'])} | {_share(r['negative_share'])} | {_pp(r['negative_share_change'])} |"
            )
        spikes = [s for s in run_report("sentiment_spikes", con, **week).to_pylist() if s["rank"] == 1]
        lines += ["", "## Spikes", ""]
        lines += [
            f"- **{_md(brand_name(s['brand']))}** {s['day']}: {s['kind']} ({s['posts']} posts, {_share(s['negative_share'], 0)} negative; "
            f"usually {s['mean_posts']:.1f} posts, {_share(s['mean_negative_share'], 0)} negative). "
            f"Top post {_md(s['post_id'])}: \"{_md((s['text'] or '')[:80])}\""
            for s in spikes
        ] or ["None."]
        disagreement = run_report("modality_disagreement", con, **week).to_pylist()
        lines += ["", "## Text and image disagreeing (posts with both)", ""]
        lines += [
            f"- {_md(brand_name(d['brand']))}: {d['disagreement_rate']:.1%} disagree, {d['opposite_rate']:.1%} opposite "
            f"({d['positive_text_negative_image']} positive text + negative image)" if d["disagreement_rate"] is not None
            else f"- {_md(brand_name(d['brand']))}: no post with both a text and an image label"
            for d in disagreement
        ]
    charts = draw() if draw is not None else []
    if charts:
        lines += ["", "Charts: " + ", ".join(f"`{p}`" for p in charts)]
    return Headline("\n".join(lines) + "\n", charts)
