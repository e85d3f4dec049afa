"""The dashboard's data: the read-only snapshot, its queries (sql/dashboard, and the report pack's through
mmsa.report), the intervals drawn around counted figures, and one Table per view and CSV export."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa

from mmsa import report
from mmsa.dashboard.filters import Filters
from mmsa.publish import snapshot_path
from mmsa.quantify import Z95
from mmsa.schema import LABELS

SQL_DIR = report.REPORTS_DIR.parent / "dashboard"
AUTO_WEEK_DAYS = 120  # longer ranges are drawn per week unless the analyst picks days


def wilson(k: int | None, n: int | None, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of k successes in n draws; (None, None) when n is 0."""
    if not n:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def net_interval(positive: int, negative: int) -> tuple[float | None, float | None]:
    """Net sentiment's interval: the Wilson interval of positive / (positive + negative), as 2p - 1."""
    low, high = wilson(positive, positive + negative)
    return (None, None) if low is None else (2 * low - 1, 2 * high - 1)


class Snapshot:
    """The read-only connection to the analyst snapshot, reopened when a newer one is published.

    The pipeline replaces the file atomically, and an open connection keeps reading the old one; DuckDB
    hands a second connect() to the same path the instance already open, so the old connection is closed
    first, once the requests using it are done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.name.endswith(".analyst.duckdb") and snapshot_path(self.path).is_file():
            raise ValueError(f"{self.path} is a pipeline database; a dashboard left open on it would stop the next "
                             f"run. Open its analyst snapshot instead: --db {snapshot_path(self.path)}")
        self._cond = threading.Condition()
        self._active = 0
        self._identity = None
        self._con = None
        self.cache: dict = {}  # what depends only on the snapshot (filter options, model versions)

    def _stat(self) -> tuple:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one request (DuckDB cursors are per thread), on the newest snapshot."""
        with self._cond:
            identity = self._stat()
            if identity != self._identity:
                while self._active:
                    self._cond.wait()
                if self._con is not None:
                    self._con.close()
                self._con = report.connect(self.path)
                self._identity = identity
                self.cache = {}
            self._active += 1
            cur = self._con.cursor()
        try:
            cur.execute("SET TimeZone = 'UTC'")
            yield cur
        finally:
            cur.close()
            with self._cond:
                self._active -= 1
                self._cond.notify_all()


def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def query_table(con: duckdb.DuckDBPyConnection, name: str, f: Filters, model_version: str, **params) -> pa.Table:
    """Run sql/dashboard/NAME.sql, or the report NAME, with the filters it takes."""
    own = (SQL_DIR / f"{name}.sql").is_file()
    sql = _sql(name) if own else None
    names = report.sql_parameters(sql) if own else report.parameters(name)
    bound = f.sql(names, model_version)
    if not own and f.model_version is None:
        bound.pop("model_version", None)  # the report's own default: its latest version, or every run
    bound.update(params)
    if own:
        return report.run_sql(sql, con, f"query {name!r}", **bound)
    return report.run_report(name, con, **bound)


def run_query(con: duckdb.DuckDBPyConnection, name: str, f: Filters, model_version: str, **params) -> list[dict]:
    """query_table's rows."""
    return query_table(con, name, f, model_version, **params).to_pylist()


def filters_not_taken(name: str) -> list[str]:
    """The dashboard filters query NAME does not take (said under its table)."""
    own = (SQL_DIR / f"{name}.sql").is_file()
    names = report.sql_parameters(_sql(name)) if own else report.parameters(name)
    labels = {"brand": "brand", "date_from": "dates", "source": "source", "lang": "language", "model_version": "model"}
    return [label for key, label in labels.items() if key not in names]


@dataclass
class Table:
    name: str
    title: str
    rows: list[dict]
    columns: list[str]
    query: str  # the SQL file it comes from


def _with_interval(rows: list[dict], k: str, n: str, prefix: str) -> None:
    for r in rows:
        r[f"{prefix}_low"], r[f"{prefix}_high"] = wilson(r[k], r[n])


def _with_net_interval(rows: list[dict]) -> None:
    for r in rows:
        r["net_low"], r["net_high"] = net_interval(r["positive"], r["negative"])


# The brand_prevalence columns a view shows, prefixed: its counted figures keep their own names.
ESTIMATE_COLUMNS = [f"estimated_{name}{end}" for name in ("positive_share", "neutral_share", "negative_share", "net")
                    for end in ("", "_low", "_high")]


def _with_estimate(row: dict, estimate: dict | None) -> None:
    """The brand_prevalence row's estimates (None: no labelled post toward the brand) into `row`."""
    for name in ("positive_share", "neutral_share", "negative_share", "net_sentiment"):
        short = "net" if name == "net_sentiment" else name
        for end in ("", "_low", "_high"):
            row[f"estimated_{short}{end}"] = None if estimate is None else estimate[f"{name}{end}"]
    row["method"] = None if estimate is None else estimate["method"]


class Queries:
    """The figures every view shows and exports, as Tables, over the snapshot (mmsa.dashboard.pages draws them)."""

    def __init__(self, db: str | Path):
        self.snapshot = Snapshot(db)
        with self.snapshot.cursor():  # fail now, not on the first page, when the file cannot be opened
            pass

    # The model version and filter options change only with a new snapshot: computed once per snapshot.
    def model_versions(self, con) -> list[dict]:
        if "versions" not in self.snapshot.cache:
            self.snapshot.cache["versions"] = report.run_report("model_versions", con).to_pylist()
        return self.snapshot.cache["versions"]

    def default_model(self, con) -> str:
        versions = self.model_versions(con)
        return next((v["model_version"] for v in versions if v["is_default"]), "")

    def options(self, con, model_version: str) -> dict[str, list[dict]]:
        key = ("options", model_version)
        if key not in self.snapshot.cache:
            rows = report.run_sql(_sql("filter_options"), con, "query 'filter_options'",
                                  model_version=model_version).to_pylist()
            grouped: dict[str, list[dict]] = {"brand": [], "source": [], "lang": []}
            for r in rows:
                grouped[r["field"]].append(r)
            self.snapshot.cache[key] = grouped
        return self.snapshot.cache[key]

    def span(self, con, f: Filters, model: str) -> tuple[date | None, date | None]:
        brands = self.options(con, f.model_version or model)["brand"]
        first = min((b["first_day"] for b in brands), default=None)
        last = max((b["last_day"] for b in brands), default=None)
        return (date.fromisoformat(f.date_from) if f.date_from else first,
                date.fromisoformat(f.date_to) if f.date_to else last)

    def period(self, con, f: Filters, model: str) -> str:
        if f.period:
            return f.period
        first, last = self.span(con, f, model)
        return "week" if first and last and (last - first).days > AUTO_WEEK_DAYS else "day"

    # Each table: (connection, filters) -> Table. The CSV export calls the same function.
    def table_trend(self, con, f: Filters) -> Table:
        model = self.default_model(con)
        period = self.period(con, f, model)
        rows = run_query(con, "trend", f, model, period=period)
        _with_net_interval(rows)
        return Table("trend", f"Volume and net sentiment per brand and {period}", rows,
                     ["brand", "period_start", "posts", "positive", "neutral", "negative", "net_sentiment",
                      "net_low", "net_high", "mean_sentiment_score"], "sql/dashboard/trend.sql")

    def table_brands(self, con, f: Filters, trend: Table | None = None) -> Table:
        """Each brand's totals over the selected days, summed from the trend's rows (`trend`, when the
        caller has it, saves running its query twice)."""
        totals: dict = {}
        for r in (trend or self.table_trend(con, f)).rows:
            t = totals.setdefault(r["brand"], {"brand": r["brand"], "posts": 0, "positive": 0, "neutral": 0, "negative": 0})
            for key in ("posts", *LABELS):
                t[key] += r[key]
        rows = sorted(totals.values(), key=lambda t: -t["posts"])
        for t in rows:
            t["net_sentiment"] = (t["positive"] - t["negative"]) / (t["positive"] + t["negative"]) \
                if t["positive"] + t["negative"] else None
            t["labelled"] = sum(t[key] for key in LABELS)  # posts in a language the model does not cover have none
            t["negative_share"] = t["negative"] / t["labelled"] if t["labelled"] else None
        _with_net_interval(rows)
        _with_interval(rows, "negative", "labelled", "negative_share")
        estimates = {r["brand"]: r for r in run_query(con, "brand_prevalence", f, self.default_model(con), per="total")}
        for t in rows:
            _with_estimate(t, estimates.get(t["brand"]))
        return Table("brands", "Per brand over the selected days: estimated shares (95% intervals) and counted labels",
                     rows, ["brand", "posts", "labelled", *ESTIMATE_COLUMNS, "method", "positive", "neutral", "negative",
                            "negative_share", "negative_share_low", "negative_share_high", "net_sentiment", "net_low",
                            "net_high"], "sql/dashboard/trend.sql")

    def table_spikes(self, con, f: Filters) -> Table:
        model = self.default_model(con)
        rows = run_query(con, "sentiment_spikes", f, model, **self.spike_settings(f))
        estimates = {}
        for day in sorted({r["day"] for r in rows}):  # each spike day's estimated shares (only those days: cheap)
            on_day = replace(f, date_from=day.isoformat(), date_to=day.isoformat(), extra={})
            estimates |= {(e["brand"], e["period_start"]): e
                          for e in run_query(con, "brand_prevalence", on_day, model, per="day")}
        for r in rows:
            _with_estimate(r, estimates.get((r["brand"], r["day"])))
        return Table("spikes", "Spikes and the posts that drove them", rows,
                     ["brand", "day", "kind", "history_days", "posts", "mean_posts", "posts_z", "negative_share",
                      "estimated_negative_share", "estimated_negative_share_low", "estimated_negative_share_high",
                      "mean_negative_share", "negative_share_z", "rank", "post_id", "brand_label", "engagement", "text"],
                     "sql/reports/sentiment_spikes.sql")

    @staticmethod
    def spike_settings(f: Filters) -> dict:
        return {"window": f.extra.get("window", 28), "threshold": f.extra.get("threshold", 3.0), "top": 5}

    def table_posts(self, con, f: Filters) -> Table:
        model = self.default_model(con)
        table = query_table(con, "posts", f, model, label=f.extra.get("label"), limit=f.extra.get("limit", 50))
        return Table("posts", "Posts", table.to_pylist(), table.column_names, "sql/dashboard/posts.sql")

    def table_voice(self, con, f: Filters) -> Table:
        model = self.default_model(con)
        period = self.period(con, f, model)
        rows = run_query(con, "share_of_voice_trend", f, model, period=period)
        _with_interval(rows, "mentions", "all_mentions", "share")
        return Table("voice", f"Share of voice per {period}", rows,
                     ["period_start", "brand", "mentions", "all_mentions", "share_of_voice", "share_low", "share_high",
                      "positive_mentions", "negative_mentions"], "sql/dashboard/share_of_voice_trend.sql")

    def table_disagreement(self, con, f: Filters) -> Table:
        rows = run_query(con, "modality_disagreement", f, self.default_model(con))
        _with_interval(rows, "disagreeing", "posts_with_both", "disagreement_rate")
        for r in rows:
            r["opposite"] = r["positive_text_negative_image"] + r["negative_text_positive_image"]
        _with_interval(rows, "opposite", "posts_with_both", "opposite_rate")
        return Table("disagreement", "How often text and image disagree, per brand", rows,
                     ["brand", "posts", "posts_with_both", "disagreeing", "disagreement_rate", "disagreement_rate_low",
                      "disagreement_rate_high", "positive_text_negative_image", "negative_text_positive_image",
                      "opposite_rate", "opposite_rate_low", "opposite_rate_high"], "sql/reports/modality_disagreement.sql")

    def table_gallery(self, con, f: Filters) -> Table:
        model = self.default_model(con)
        table = query_table(con, "posts", f, model, opposite=True, limit=f.extra.get("limit", 24))
        return Table("gallery", "Posts whose text and image point opposite ways, most engaging first",
                     table.to_pylist(), table.column_names, "sql/dashboard/posts.sql")

    def table_image_status(self, con, f: Filters) -> Table:
        rows = run_query(con, "image_status_mix", f, self.default_model(con))
        totals: dict = {}
        for r in rows:
            totals[r["brand"]] = totals.get(r["brand"], 0) + r["posts"]
        for r in rows:
            r["brand_posts"] = totals[r["brand"]]
        _with_interval(rows, "posts", "brand_posts", "share")
        return Table("image_status", "What happened to the images", rows,
                     ["brand", "image_status", "posts", "share_of_brand_posts", "share_low", "share_high",
                      "with_image_label"], "sql/reports/image_status_mix.sql")

    def table_unscored(self, con, f: Filters) -> Table:
        rows = run_query(con, "unscored_posts", f, self.default_model(con))
        return Table("unscored", "Posts not scored, per language (left out of every share and net sentiment)", rows,
                     ["brand", "unscored_reason", "lang", "posts", "share_of_brand_posts", "first_day", "last_day"],
                     "sql/reports/unscored_posts.sql")

    def table_rejected(self, con, f: Filters) -> Table:
        rows = run_query(con, "rejected_rows", f, self.default_model(con))
        # dated by when they were refused, not by any post's day: said, or a range of post days reads "none refused"
        return Table("rejected", "Input rows refused, per run and reason (dates: the day a run refused them)", rows,
                     ["run_id", "dump", "model_version", "reason", "rows", "first_line", "example_raw"],
                     "sql/reports/rejected_rows.sql")

    def table_runs(self, con, f: Filters) -> Table:
        rows = run_query(con, "runs", f, self.default_model(con))
        return Table("runs", "Scoring runs (dates: the day a run started)", rows,
                     ["run_id", "dump", "model_version", "started_at", "seconds", "posts_in", "posts_scored",
                      "posts_unscored", "posts_rejected", "rejected_rate", "stored_posts", "image_status", "not_covered"], "sql/reports/runs.sql")

    def table_models(self, con, f: Filters) -> Table:
        unfiltered = not (f.brand or f.date_from or f.date_to or f.model_version)
        rows = self.model_versions(con) if unfiltered else run_query(con, "model_versions", f, self.default_model(con))
        return Table("models", "Model versions", rows,
                     ["model_version", "is_default", "posts", "brands", "first_day", "last_day", "runs", "last_scored_at"],
                     "sql/reports/model_versions.sql")

    TABLES = ("trend", "brands", "spikes", "posts", "voice", "disagreement", "gallery", "image_status", "unscored", "rejected",
              "runs", "models")
