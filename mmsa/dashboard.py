"""`mmsa dashboard`: a local web app over the analyst snapshot, for clicking from a trend to its posts.

Built on the standard library's ThreadingHTTPServer with pages and SVG charts rendered on the
server, and no JavaScript at all: nothing to vendor or fetch from a CDN, every click is a link or a
GET form (so every view has an address that can be bookmarked or shared), and the pages are sent
with a Content-Security-Policy that forbids scripts, so hostile post text stays inert even if an
escape were ever missed. The queries are SQL files: the report pack's (sql/reports) and the
dashboard's own (sql/dashboard), run through mmsa.report. The snapshot is opened read-only and
reopened when the pipeline publishes a new one. Thumbnails come only from the project's image
cache (`--cache`), re-encoded as small JPEGs; the analyst's browser never calls an image host.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import ipaddress
import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb
import pyarrow as pa

from mmsa import report
from mmsa.publish import snapshot_path

SQL_DIR = report.REPORTS_DIR.parent / "dashboard"
CSS_PATH = Path(__file__).with_name("dashboard.css")
Z95 = 1.959963984540054  # two-sided 95%
AUTO_WEEK_DAYS = 120  # longer ranges are drawn per week unless the analyst picks days
MAX_PANELS = 8  # brands drawn as small multiples on the overview; the busiest first
HTML_ROWS = 500  # rows of a table shown on a page; its CSV export has them all
LABELS = ("positive", "neutral", "negative")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728")
SECURITY_HEADERS = {
    # No script may run and nothing may load from elsewhere: post text is untrusted input.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
VIEWS = (("/", "Overview"), ("/spikes", "Spikes"), ("/voice", "Share of voice"),
         ("/disagreement", "Text vs image"), ("/quality", "Data quality"))
NET_DEFINITION = (
    "Net sentiment = (positive − negative) / (positive + negative) posts, from −1 to +1; neutral posts do "
    "not count, and a period with neither has none. Intervals and bands are 95% Wilson score intervals: for "
    "net sentiment, of the positive fraction p among positive and negative posts, drawn as 2p − 1; for a share, "
    "of that share. They measure how much a figure could move by chance with this many posts, taking the "
    "model's labels as given: they do not include the model's own errors."
)
ESTIMATE_DEFINITION = (
    "Estimated shares: what share of the posts toward a brand is positive, neutral and negative, estimated from "
    "the model's probabilities and corrected for the model having learnt on another mix of classes (counted "
    "labels drift toward that mix: docs/analysts.md). Estimated net = positive − negative share, from −1 to +1. "
    "Their 95% intervals come from resampling the period's posts (report brand_prevalence): a few posts give a "
    "wide one. The counted figures stand beside them."
)


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


def esc(value: object) -> str:
    """Text for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _safe_link(url: str | None) -> str | None:
    """An http(s) address to link to, else None (a javascript: or data: URL from a dump is never a link)."""
    if not url or urlsplit(url.strip()).scheme.lower() not in ("http", "https"):
        return None
    return url.strip()


# --- filters ---------------------------------------------------------------------------------


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = [v.strip() for v in query.get(key, []) if v.strip()]
    return values[-1] if values else None


def _day(query: dict[str, list[str]], key: str) -> str | None:
    value = _one(query, key)
    if value is not None:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{key} must be a date YYYY-MM-DD, not {value!r}") from None
    return value


def _number(query: dict[str, list[str]], key: str, default: float, low: float, high: float, kind=int):
    value = _one(query, key)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{key} must be between {low} and {high}")
    return number


@dataclass(frozen=True)
class Filters:
    """The filters every view takes, from the query string; None = no filter (or the default)."""

    brand: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    source: str | None = None
    lang: str | None = None
    model_version: str | None = None
    period: str | None = None  # 'day', 'week' or None: chosen from the range
    extra: dict = field(default_factory=dict, compare=False)  # a view's own settings (window, label, ...)

    NAMES = ("brand", "date_from", "date_to", "source", "lang", "model_version", "period")

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> Filters:
        period = _one(query, "period")
        if period not in (None, "day", "week"):
            raise ValueError(f"period must be day or week, not {period!r}")
        return cls(brand=_one(query, "brand"), date_from=_day(query, "date_from"), date_to=_day(query, "date_to"),
                   source=_one(query, "source"), lang=_one(query, "lang"),
                   model_version=_one(query, "model_version"), period=period)

    def query(self, extra: bool = False, **changes: object) -> str:
        """This filter set (with `changes`) as a query string, empty values left out; the view's own
        settings only with `extra` (its CSV links), not in links to other views."""
        values = {name: getattr(self, name) for name in self.NAMES} | (dict(self.extra) if extra else {}) | changes
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def sql(self, names: list[str], model_version: str) -> dict:
        """The bound parameters for a query taking `names`: the filters it knows, the resolved model version."""
        values = {name: getattr(self, name) for name in self.NAMES if name != "model_version"} | dict(self.extra)
        values["model_version"] = self.model_version or model_version
        return {k: v for k, v in values.items() if k in names}


# --- the snapshot ----------------------------------------------------------------------------


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


# --- the tables each view shows (and exports) ------------------------------------------------


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


class Dashboard:
    """The pages, tables and thumbnails, independent of HTTP (benchmarks call handle() directly)."""

    def __init__(self, db: str | Path, cache: str | Path | None = None):
        self.snapshot = Snapshot(db)
        self.images = None
        if cache is not None:
            from mmsa.images.cache import ImageCache

            self.images = ImageCache(cache)
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

    def _span(self, con, f: Filters, model: str) -> tuple[date | None, date | None]:
        brands = self.options(con, f.model_version or model)["brand"]
        first = min((b["first_day"] for b in brands), default=None)
        last = max((b["last_day"] for b in brands), default=None)
        return (date.fromisoformat(f.date_from) if f.date_from else first,
                date.fromisoformat(f.date_to) if f.date_to else last)

    def period(self, con, f: Filters, model: str) -> str:
        if f.period:
            return f.period
        first, last = self._span(con, f, model)
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
        rows = run_query(con, "sentiment_spikes", f, model, **self._spike_settings(f))
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
                      "mean_negative_share", "negative_share_z", "rank", "post_id", "label", "engagement", "text"],
                     "sql/reports/sentiment_spikes.sql")

    @staticmethod
    def _spike_settings(f: Filters) -> dict:
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
        return Table("rejected", "Input rows refused, per run and reason", rows,
                     ["run_id", "dump", "model_version", "reason", "rows", "first_line", "example_raw"],
                     "sql/reports/rejected_rows.sql")

    def table_runs(self, con, f: Filters) -> Table:
        rows = run_query(con, "runs", f, self.default_model(con))
        return Table("runs", "Scoring runs", rows,
                     ["run_id", "dump", "model_version", "started_at", "seconds", "posts_in", "posts_scored",
                      "posts_rejected", "rejected_rate", "stored_posts", "image_status", "not_covered"], "sql/reports/runs.sql")

    def table_models(self, con, f: Filters) -> Table:
        unfiltered = not (f.brand or f.date_from or f.date_to or f.model_version)
        rows = self.model_versions(con) if unfiltered else run_query(con, "model_versions", f, self.default_model(con))
        return Table("models", "Model versions", rows,
                     ["model_version", "is_default", "posts", "brands", "first_day", "last_day", "runs", "last_scored_at"],
                     "sql/reports/model_versions.sql")

    TABLES = ("trend", "brands", "spikes", "posts", "voice", "disagreement", "gallery", "image_status", "unscored", "rejected",
              "runs", "models")

    # --- requests ----------------------------------------------------------------------------

    def handle(self, path: str, query: dict[str, list[str]]) -> Response:
        """The response to GET `path` with the parsed query string."""
        try:
            if path == "/static/dashboard.css":
                return Response(200, "text/css; charset=utf-8", CSS_PATH.read_bytes(), cache=True)
            if path == "/thumb":
                return self.thumbnail(_one(query, "url"))
            f = Filters.parse(query)
            if path.startswith("/csv/") and path[5:] in self.TABLES:
                return self.csv(path[5:], f, query)
            pages = {"/": self.page_overview, "/spikes": self.page_spikes, "/posts": self.page_posts,
                     "/voice": self.page_voice, "/disagreement": self.page_disagreement, "/quality": self.page_quality}
            if path not in pages:
                return Response(404, "text/plain; charset=utf-8", b"not found")
            with self.snapshot.cursor() as con:
                return Response(200, "text/html; charset=utf-8", pages[path](con, f, query).encode())
        except ValueError as exc:
            return Response(400, "text/html; charset=utf-8", _page("Bad request", "", f"<p class='error'>{esc(exc)}</p>").encode())

    def csv(self, name: str, f: Filters, query: dict[str, list[str]]) -> Response:
        f = self._with_view_settings(name, f, query)
        with self.snapshot.cursor() as con:
            table = getattr(self, f"table_{name}")(con, f)
        return Response(200, "text/csv; charset=utf-8", to_csv(table).encode(),
                        headers={"Content-Disposition": f'attachment; filename="mmsa-{name}.csv"'})

    @staticmethod
    def _with_view_settings(name: str, f: Filters, query: dict[str, list[str]]) -> Filters:
        extra: dict = {}
        if name == "spikes":
            extra = {"window": _number(query, "window", 28, 3, 365), "threshold": _number(query, "threshold", 3.0, 0.5, 50, float)}
        elif name in ("posts", "gallery"):
            label = _one(query, "label")
            if label not in (None, *LABELS):
                raise ValueError(f"label must be one of {', '.join(LABELS)}")
            extra = {"label": label, "limit": _number(query, "limit", 50 if name == "posts" else 24, 1, 1000)}
        return replace(f, extra={k: v for k, v in extra.items() if v is not None})

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one Dashboard per process; thumbnails are small
    def _thumbnail_bytes(self, url: str) -> bytes | None:
        from PIL import Image

        from mmsa.images.cache import CacheDamaged

        out = io.BytesIO()
        try:
            result = self.images.lookup(url)
            if result is None or result.status != "ok":
                return None
            with Image.open(io.BytesIO(self.images.load(result.image_key))) as img:
                img.thumbnail((240, 240))
                img.convert("RGB").save(out, format="JPEG", quality=80)  # re-encoded: never the dump's bytes as served
        except (OSError, ValueError, CacheDamaged):  # bytes Pillow cannot draw, or a damaged entry: no thumbnail
            return None
        return out.getvalue()

    def thumbnail(self, url: str | None) -> Response:
        data = self._thumbnail_bytes(url) if self.images is not None and url else None
        if data is None:
            return Response(404, "text/plain; charset=utf-8", b"no cached image")
        return Response(200, "image/jpeg", data, cache=True)

    # --- pages -------------------------------------------------------------------------------

    def _chrome(self, con, path: str, f: Filters, title: str, body: str, extra_fields: str = "") -> str:
        model = self.default_model(con)
        options = self.options(con, f.model_version or model)
        nav = " ".join(f'<a href="{esc(p)}?{esc(f.query())}"{" class=current" if p == path else ""}>{esc(t)}</a>'
                       for p, t in VIEWS)

        def select(name: str, label: str, values: list[tuple[str, str]]) -> str:
            current = getattr(f, name) if name in Filters.NAMES else f.extra.get(name)
            opts = "".join(f'<option value="{esc(v)}"{" selected" if v == (current or "") else ""}>{esc(t)}</option>'
                           for v, t in values)
            return f'<label>{esc(label)} <select name="{name}">{opts}</select></label>'

        def listed(field_: str) -> list[tuple[str, str]]:
            return [("", "all")] + [(o["value"], f"{o['value']} ({o['posts']:,})")
                                    for o in options[field_] if o["value"] is not None]

        versions = [("", f"latest ({model})")] + [(v["model_version"], v["model_version"]) for v in self.model_versions(con)]
        first, last = self._span(con, replace(f, date_from=None, date_to=None), f.model_version or model)
        form = (
            f'<form method="get" action="{esc(path)}" class="filters">'
            + select("brand", "Brand", listed("brand"))
            + f'<label>From <input type="date" name="date_from" value="{esc(f.date_from)}" min="{esc(first)}" max="{esc(last)}"></label>'
            + f'<label>To <input type="date" name="date_to" value="{esc(f.date_to)}" min="{esc(first)}" max="{esc(last)}"></label>'
            + select("source", "Source", listed("source"))
            + select("lang", "Language", listed("lang"))
            + select("model_version", "Model", versions)
            + select("period", "Per", [("", "auto"), ("day", "day"), ("week", "week")])
            + extra_fields
            + f'<button type="submit">Apply</button> <a href="{esc(path)}">Reset</a></form>'
        )
        header = (f'<header><h1>mmsa brand sentiment</h1><nav>{nav}</nav>'
                  f'<p class="snapshot">Snapshot <code>{esc(self.snapshot.path)}</code> (read-only), model '
                  f'<code>{esc(f.model_version or model)}</code>, posts from {esc(first)} to {esc(last)} (UTC days).</p>'
                  f'{form}</header>')
        return _page(title, header, body)

    def _table_html(self, table: Table, f: Filters, columns: list[str] | None = None) -> str:
        columns = columns or table.columns
        shown = table.rows[:HTML_ROWS]
        more = f" (first {HTML_ROWS} of {len(table.rows):,} shown; the CSV has all)" if len(table.rows) > HTML_ROWS else ""
        missing = filters_not_taken(Path(table.query).stem)
        note = f" Not filtered by: {', '.join(missing)}." if missing else ""
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in shown)
        return (f'<section class="table" id="table-{table.name}"><h3>{esc(table.title)}</h3>'
                f'<p class="meta">{len(table.rows):,} rows{more}, from <code>{esc(table.query)}</code>.{esc(note)} '
                f'<a class="csv" href="/csv/{table.name}?{esc(f.query(extra=True))}">CSV</a></p>'
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>')

    def page_overview(self, con, f: Filters, query) -> str:
        trend = self.table_trend(con, f)
        model = self.default_model(con)
        period = self.period(con, f, model)
        brands = self.table_brands(con, f, trend)
        first, last = self._span(con, f, model)
        panels = []
        if trend.rows and first and last:
            periods = _periods(first, last, period)
            by_brand: dict = {}
            for r in trend.rows:
                by_brand.setdefault(r["brand"], {})[r["period_start"]] = r
            busiest = [b["brand"] for b in brands.rows][:MAX_PANELS]
            for brand in busiest:
                def link(start: date, brand=brand) -> str | None:
                    if brand is None:  # posts without a brand cannot be filtered for: no link
                        return None
                    end = start + timedelta(days=6) if period == "week" else start
                    end = min(end, last)
                    return "/posts?" + f.query(brand=brand, date_from=max(start, first).isoformat(), date_to=end.isoformat())
                panels.append(trend_svg(brand, by_brand[brand], periods, period, link))
            if len(brands.rows) > MAX_PANELS:
                panels.append(f"<p class='meta'>The {MAX_PANELS} brands with most posts are drawn; pick a brand to see another.</p>")
        body = (
            f"<h2>Brand overview</h2><p class='definition'>{esc(ESTIMATE_DEFINITION)}</p>"
            + (estimates_svg(brands.rows) if brands.rows else "")
            + f"<p class='definition'>{esc(NET_DEFINITION)}</p>"
            f"<p class='meta'>Bars: posts per {esc(period)} (click one to read its posts). Line: net sentiment, "
            "its 95% band shaded. Days are UTC.</p>"
            + ("".join(panels) if panels else "<p>No posts match these filters.</p>")
            + self._table_html(brands, f)
            + "<details><summary>Every brand and " + esc(period) + "</summary>" + self._table_html(trend, f) + "</details>"
        )
        return self._chrome(con, "/", f, "Overview", body)

    def page_spikes(self, con, f: Filters, query) -> str:
        f = self._with_view_settings("spikes", f, query)
        spikes = self.table_spikes(con, f)
        settings = self._spike_settings(f)
        grouped: dict = {}
        for r in spikes.rows:
            grouped.setdefault((r["brand"], r["day"]), []).append(r)
        history: dict = {}
        if grouped:
            start = min(day for _, day in grouped) - timedelta(days=settings["window"])
            days_f = replace(f, date_from=start.isoformat(), date_to=max(day for _, day in grouped).isoformat(),
                             period="day", extra={})
            for r in run_query(con, "trend", days_f, self.default_model(con), period="day"):
                history[(r["brand"], r["period_start"])] = r["posts"]
        cards = []
        for (brand, day), rows in grouped.items():
            s = rows[0]
            window_days = [day - timedelta(days=i) for i in range(s["history_days"], -1, -1)]
            link = "/posts?" + f.query(brand=brand, date_from=day.isoformat(), date_to=day.isoformat())
            drivers = "".join(
                f"<li><code>{esc(r['post_id'])}</code> <span class='label {esc(r['label'])}'>{esc(r['label'])}</span> "
                f"engagement {r['engagement']:,}: {esc(r['text'])}</li>" for r in rows)
            cards.append(
                f'<article class="spike"><h3>{esc(brand)} · <a class="spike-day" href="{esc(link)}">{esc(day)}</a> · {esc(s["kind"])}</h3>'
                f'<p>{s["posts"]:,} posts against a mean of {_fmt(s["mean_posts"], 1)} over the {s["history_days"]} days before '
                f'(z = {_fmt(s["posts_z"], 2)}); negative share {_pct(s["negative_share"])} against {_pct(s["mean_negative_share"])} '
                f'(z = {_fmt(s["negative_share_z"], 2)}), counted from labels.</p>'
                + _estimate_sentence(s)
                + sparkline_svg([history.get((brand, d), 0) for d in window_days], f"{brand}: posts per day, the "
                                f"{s['history_days']} days judged on and {day}")
                + f"<p class='meta'>Driving posts (negative first when the negative share spiked, then by engagement):</p><ol>{drivers}</ol>"
                f'<p><a href="{esc(link)}">All posts of {esc(brand)} on {esc(day)}</a></p></article>')
        extra = (f'<label>Window <input type="number" name="window" min="3" max="365" value="{settings["window"]}"></label>'
                 f'<label>Threshold z <input type="number" name="threshold" step="0.5" min="0.5" max="50" value="{settings["threshold"]}"></label>')
        body = (
            "<h2>Spikes</h2><p class='definition'>A brand-day is a spike when its volume, or its negative share (on days "
            f"with at least 5 posts), lies {esc(settings['threshold'])} or more standard deviations (z) above the mean of "
            f"the {settings['window']} days before it (days without posts count as 0; a day needs 7 days of history). "
            "The bars under each spike are that history, the spike day in red.</p>"
            + ("".join(cards) if cards else "<p>No spikes with these filters.</p>")
            + self._table_html(spikes, f)
        )
        return self._chrome(con, "/spikes", f, "Spikes", body, extra)

    def page_posts(self, con, f: Filters, query) -> str:
        f = self._with_view_settings("posts", f, query)
        posts = self.table_posts(con, f)
        what = " · ".join(esc(x) for x in (f.brand or "every brand", _range(f), f.source, f.lang, f.extra.get("label")) if x)
        label = ("<label>Label <select name='label'>" + "".join(
            f'<option value="{v}"{" selected" if v == (f.extra.get("label") or "") else ""}>{v or "any"}</option>'
            for v in ("", *LABELS)) + "</select></label>")
        body = (f"<h2>Posts: {what}</h2><p class='meta'>The {len(posts.rows)} most engaging "
                f"(at most {f.extra['limit']}; engagement = likes + shares + replies). Labels and probabilities: fused, "
                "text alone and image alone.</p>"
                + ("<div class='posts'>" + "".join(self._post_card(p) for p in posts.rows) + "</div>"
                   if posts.rows else "<p>No posts match.</p>")
                + self._table_html(posts, f, ["post_id", "created_at", "brand", "source", "lang", "author",
                                                      "label", "text_label", "image_label", "engagement", "text"]))
        return self._chrome(con, "/posts", f, "Posts", body, label)

    def _post_card(self, p: dict) -> str:
        if self.images is not None and p["image_status"] == "ok" and p["image_url"]:
            thumb = f'<img src="/thumb?{esc(urlencode({"url": p["image_url"]}))}" alt="image of {esc(p["post_id"])}" loading="lazy">'
        else:
            why = (f"not scored ({p['unscored_reason']}: {p['lang']})" if p["unscored_reason"] else
                   p["image_status"] if p["image_status"] != "ok" else "not in the image cache (start with --cache)")
            thumb = f"<div class='noimage'>no image: {esc(why)}</div>"
        link = _safe_link(p["link"])
        original = (f' · <a href="{esc(link)}" rel="noopener noreferrer nofollow" target="_blank">original post</a>'
                    if link else "")

        def prediction(name: str, prefix: str) -> str:
            label = p[f"{prefix}label"]
            if label is None:
                return f"<tr><th>{name}</th><td colspan='2'>none</td></tr>"
            probs = [p[f"{prefix}p_{lab}"] for lab in LABELS]
            return (f"<tr><th>{name}</th><td><span class='label {esc(label)}'>{esc(label)}</span></td>"
                    f"<td>{probs_svg(probs)} {' / '.join(_fmt(x, 2) for x in probs)}</td></tr>")

        return (
            f'<article class="post" data-post-id="{esc(p["post_id"])}"><div class="thumb">{thumb}</div><div class="body">'
            f'<p class="meta"><code>{esc(p["post_id"])}</code> · {esc(p["brand"])} · {esc(p["source"])} · {esc(p["lang"])} · '
            f'{esc(_cell(p["created_at"]))} · by <span class="author">{esc(p["author"])}</span></p>'
            f'<p class="text">{esc(p["text"])}</p>'
            f'<table class="preds"><tr><th></th><th>label</th><th>p positive / neutral / negative</th></tr>'
            + prediction("fused", "") + prediction("text", "text_") + prediction("image", "image_")
            + f'</table><p class="meta">engagement {p["engagement"]:,} ({_cell(p["likes"]) or 0} likes, '
            f'{_cell(p["shares"]) or 0} shares, {_cell(p["replies"]) or 0} replies){original}</p></div></article>'
        )

    def page_voice(self, con, f: Filters, query) -> str:
        voice = self.table_voice(con, f)
        model = self.default_model(con)
        period = self.period(con, f, model)
        first, last = self._span(con, f, model)
        chart = voice_svg(voice.rows, _periods(first, last, period)) if voice.rows and first and last else "<p>No posts match.</p>"
        body = ("<h2>Share of voice</h2><p class='definition'>Each brand's mentions as a share of all brands' mentions in "
                f"the same {esc(period)}, with its 95% Wilson interval (shaded). A brand filter keeps that brand's line, "
                "its share still of all brands.</p>" + chart + self._table_html(voice, f)
                + f"<p class='definition'>{esc(NET_DEFINITION)}</p>")
        return self._chrome(con, "/voice", f, "Share of voice", body)

    def page_disagreement(self, con, f: Filters, query) -> str:
        f = self._with_view_settings("gallery", f, query)
        rates = self.table_disagreement(con, f)
        gallery = self.table_gallery(con, f)
        body = ("<h2>Text vs image</h2><p class='definition'>Among posts with both a text and an image prediction: "
                "how often the two labels differ, and how often they point opposite ways (one positive, one "
                "negative: often sarcasm, e.g. praise over a photo of a broken product). Rates with 95% Wilson intervals.</p>"
                + self._table_html(rates, f)
                + f"<h3>Gallery: {len(gallery.rows)} opposite posts, most engaging first</h3>"
                + ("<div class='posts gallery'>" + "".join(self._post_card(p) for p in gallery.rows) + "</div>"
                   if gallery.rows else "<p>No post has text and image pointing opposite ways.</p>")
                + f'<p class="meta"><a class="csv" href="/csv/gallery?{esc(f.query(extra=True))}">CSV of these posts</a></p>')
        return self._chrome(con, "/disagreement", f, "Text vs image", body)

    def page_quality(self, con, f: Filters, query) -> str:
        body = ("<h2>Data quality</h2><p class='definition'>What the numbers rest on: what happened to the images "
                "(a post whose image failed was scored on its text alone), posts not scored because the model does "
                "not cover their language, input rows refused, each run, and the "
                "model versions (the views read one version at a time).</p>"
                + self._table_html(self.table_image_status(con, f), f)
                + self._table_html(self.table_unscored(con, f), f)
                + self._table_html(self.table_rejected(con, f), f)
                + self._table_html(self.table_runs(con, f), f)
                + self._table_html(self.table_models(con, f), f))
        return self._chrome(con, "/quality", f, "Data quality", body)


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    cache: bool = False
    headers: dict = field(default_factory=dict)


# --- rendering helpers -----------------------------------------------------------------------


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        return f"{value:.4f}"
    return report.cell(value, precise=False)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _estimate_sentence(row: dict) -> str:
    """A spike day's estimated negative share with its interval, in words (brand_prevalence)."""
    if row["estimated_negative_share"] is None:
        return "<p class='estimate'>No post of the day has a label toward the brand: no estimate.</p>"
    return (f"<p class='estimate'>Estimated negative share {_pct(row['estimated_negative_share'])} (95%: "
            f"{_pct(row['estimated_negative_share_low'])} to {_pct(row['estimated_negative_share_high'])}; "
            f"{esc(row['method'])}).</p>")


def _range(f: Filters) -> str:
    if f.date_from and f.date_from == f.date_to:
        return f.date_from
    if f.date_from or f.date_to:
        return f"{f.date_from or '…'} to {f.date_to or '…'}"
    return "all days"


def to_csv(table: Table) -> str:
    """CSV of every column at full precision. A text cell that a spreadsheet would run as a formula
    (it starts with = + - @ or a tab) gets a leading apostrophe: post text is untrusted."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = list(table.rows[0]) if table.rows else table.columns  # every column the query and the intervals gave
    writer.writerow(columns)
    for row in table.rows:
        cells = []
        for c in columns:
            value = row.get(c)
            text = report.cell(value, precise=True)
            if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
                text = "'" + text
            cells.append(text)
        writer.writerow(cells)
    return buf.getvalue()


def _page(title: str, header: str, body: str) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)} · mmsa dashboard</title><link rel='stylesheet' href='/static/dashboard.css'></head>"
            f"<body>{header}<main>{body}</main><footer>mmsa dashboard: read-only over the analyst snapshot; "
            "SQL in sql/reports and sql/dashboard; docs/analysts.md.</footer></body></html>")


def _periods(first: date, last: date, period: str) -> list[date]:
    if period == "week":
        first = first - timedelta(days=first.weekday())
        step = 7
    else:
        step = 1
    return [first + timedelta(days=i) for i in range(0, (last - first).days + 1, step)]


def _ticks(periods: list[date], x, bottom: float, count: int = 7) -> str:
    if not periods:
        return ""
    picks = sorted({round(i * (len(periods) - 1) / max(count - 1, 1)) for i in range(count)})
    out = []
    for n, i in enumerate(picks):
        label = periods[i].strftime("%Y-%m-%d" if n == 0 else "%b %d")
        out.append(f'<text class="tick" x="{x(i):.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{esc(label)}</text>')
    return "".join(out)


W, LEFT, RIGHT = 960, 56, 12


def trend_svg(brand: str | None, rows: dict, periods: list[date], period: str, link) -> str:
    """One brand's panel: volume bars (links to their posts) over the net-sentiment line and its band."""
    vol_top, vol_h, net_top, net_h = 24, 70, 112, 110
    height = net_top + net_h + 22
    n = len(periods)
    step = (W - LEFT - RIGHT) / max(n, 1)

    def x(i: float) -> float:
        return LEFT + (i + 0.5) * step

    def y(v: float) -> float:
        return net_top + (1 - v) / 2 * net_h

    vmax = max((r["posts"] for r in rows.values()), default=1) or 1
    bar_w = max(step * 0.8, 0.8)
    parts = [f'<text class="panel-title" x="{LEFT}" y="14">{esc(brand if brand is not None else "(no brand)")}</text>',
             f'<text class="tick" x="{LEFT - 4}" y="{vol_top + 4}" text-anchor="end">{vmax:,}</text>',
             f'<text class="tick" x="{LEFT - 4}" y="{vol_top + vol_h}" text-anchor="end">0</text>',
             f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{vol_top + vol_h}" y2="{vol_top + vol_h}"/>']
    for v in (1, 0, -1):
        parts.append(f'<line class="{"zero" if v == 0 else "grid"}" x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:+d}</text>')
    segments, current, points = [], [], []
    for i, p in enumerate(periods):
        r = rows.get(p)
        if r is None or r["net_low"] is None:
            if current:
                segments.append(current)
            current = []
        if r is None:
            continue
        h = vol_h * r["posts"] / vmax
        tip = (f"{brand} {p} ({period}): {r['posts']:,} posts, {r['positive']:,} positive, {r['negative']:,} negative; "
               f"net sentiment {_fmt(r['net_sentiment'], 2)} (95%: {_fmt(r['net_low'], 2)} to {_fmt(r['net_high'], 2)})")
        bar = (f'<rect class="bar" x="{x(i) - bar_w / 2:.1f}" y="{vol_top + vol_h - h:.1f}" width="{bar_w:.1f}" '
               f'height="{max(h, 0.5):.1f}"><title>{esc(tip)}</title></rect>')
        href = link(p)
        parts.append(f'<a href="{esc(href)}" data-period="{p}">{bar}</a>' if href else bar)
        if r["net_low"] is not None:
            current.append((i, r))
            points.append((i, r))
    if current:
        segments.append(current)
    for seg in segments:
        if len(seg) == 1:  # a lone period: its interval as a vertical line
            (i, r), = seg
            parts.insert(4, f'<line class="interval" x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(r["net_high"]):.1f}" '
                            f'y2="{y(r["net_low"]):.1f}"/>')
            continue
        upper = " ".join(f"{x(i):.1f},{y(r['net_high']):.1f}" for i, r in seg)
        lower = " ".join(f"{x(i):.1f},{y(r['net_low']):.1f}" for i, r in reversed(seg))
        parts.insert(4, f'<polygon class="band" points="{upper} {lower}"/>')
        line = " ".join(f"{x(i):.1f},{y(r['net_sentiment']):.1f}" for i, r in seg)
        parts.append(f'<polyline class="net" points="{line}"/>')
    if len(points) <= 120:
        parts += [f'<circle class="net-point" cx="{x(i):.1f}" cy="{y(net):.1f}" r="2.5"/>'
                  for i, net in ((i, r["net_sentiment"]) for i, r in points)]
    parts.append(f'<text class="axis-label" x="8" y="{net_top + net_h / 2}" transform="rotate(-90 8 {net_top + net_h / 2})" '
                 'text-anchor="middle">net sentiment</text>')
    parts.append(_ticks(periods, x, net_top + net_h))
    return (f'<svg class="chart trend" role="img" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
            f'data-brand="{esc(brand)}"><title>{esc(brand)}: posts and net sentiment per {period}</title>{"".join(parts)}</svg>')


def estimates_svg(rows: list[dict]) -> str:
    """Per brand, one bar of the estimated positive / neutral / negative shares, the negative share's 95%
    interval as a whisker and the counted negative share as a dashed tick; the estimated and counted net
    sentiment (positive − negative share) beside it."""
    rows = [r for r in rows if r["estimated_negative_share"] is not None][:MAX_PANELS]
    x0, width, row_h, top = 190, 520, 28, 22
    height = top + row_h * len(rows) + 8
    parts = [f'<text class="tick" x="{x0}" y="12">0%</text>',
             f'<text class="tick" x="{x0 + width}" y="12" text-anchor="end">100%</text>']
    for i, r in enumerate(rows):
        y = top + i * row_h
        x = x0
        for label in LABELS:
            share = r[f"estimated_{label}_share"]
            tip = (f"{r['brand']}: estimated {label} share {_pct(share)} (95%: {_pct(r[f'estimated_{label}_share_low'])} "
                   f"to {_pct(r[f'estimated_{label}_share_high'])}); counted {_pct(r[label] / r['posts'])}")
            parts.append(f'<rect class="p-{label}" x="{x:.1f}" y="{y}" width="{width * share:.1f}" height="16">'
                         f'<title>{esc(tip)}</title></rect>')
            x += width * share
        # the negative segment ends at 100%, so its share's bounds sit at 1 - high .. 1 - low
        low, high = (x0 + width * (1 - r[f"estimated_negative_share_{end}"]) for end in ("high", "low"))
        counted = x0 + width * (1 - r["negative"] / r["posts"])
        counted_net = (r["positive"] - r["negative"]) / r["posts"]
        parts += [f'<line class="whisker" x1="{low:.1f}" x2="{high:.1f}" y1="{y + 8}" y2="{y + 8}"/>',
                  f'<line class="whisker" x1="{low:.1f}" x2="{low:.1f}" y1="{y + 3}" y2="{y + 13}"/>',
                  f'<line class="whisker" x1="{high:.1f}" x2="{high:.1f}" y1="{y + 3}" y2="{y + 13}"/>',
                  f'<line class="counted" x1="{counted:.1f}" x2="{counted:.1f}" y1="{y - 2}" y2="{y + 18}"/>',
                  f'<text class="panel-title" x="{x0 - 8}" y="{y + 13}" text-anchor="end">{esc(r["brand"])}</text>',
                  f'<text class="tick" x="{x0 + width + 8}" y="{y + 12}">net {_fmt(r["estimated_net"], 2)} (95%: '
                  f'{_fmt(r["estimated_net_low"], 2)} to {_fmt(r["estimated_net_high"], 2)}); counted {counted_net:.2f}</text>']
    return (f'<svg class="chart estimates" role="img" viewBox="0 0 {W} {height}" width="{W}" height="{height}">'
            f'<title>Estimated shares per brand with the negative share\'s 95% interval; counted negative share dashed'
            f'</title>{"".join(parts)}</svg>')


def voice_svg(rows: list[dict], periods: list[date]) -> str:
    """Each brand's share of voice over time, a line with its shaded 95% band; the busiest brands first."""
    top, h = 16, 240
    height = top + h + 40
    index = {p: i for i, p in enumerate(periods)}
    step = (W - LEFT - RIGHT) / max(len(periods), 1)

    def x(i: float) -> float:
        return LEFT + (i + 0.5) * step

    totals: dict = {}
    for r in rows:
        totals[r["brand"]] = totals.get(r["brand"], 0) + r["mentions"]
    brands = sorted(totals, key=lambda b: -totals[b])[:len(COLORS)]
    ymax = min(1.0, max((r["share_high"] or 0 for r in rows if r["brand"] in brands), default=1) * 1.1) or 1

    def y(v: float) -> float:
        return top + (1 - v / ymax) * h

    parts = []
    for v in (0, ymax / 2, ymax):
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>')
    legend = []
    for n, brand in enumerate(brands):
        color = COLORS[n]
        mine = sorted((index[r["period_start"]], r) for r in rows if r["brand"] == brand and r["period_start"] in index)
        if not mine:
            continue
        upper = " ".join(f"{x(i):.1f},{y(r['share_high']):.1f}" for i, r in mine)
        lower = " ".join(f"{x(i):.1f},{y(r['share_low']):.1f}" for i, r in reversed(mine))
        parts.insert(0, f'<polygon fill="{color}" fill-opacity="0.15" points="{upper} {lower}"/>')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="'
                     + " ".join(f"{x(i):.1f},{y(r['share_of_voice']):.1f}" for i, r in mine) + '">'
                     f'<title>{esc(brand)}</title></polyline>')
        legend.append(f'<tspan fill="{color}">■ </tspan><tspan>{esc(brand)}  </tspan>')
    parts.append(_ticks(periods, x, top + h))
    parts.append(f'<text class="legend" x="{LEFT}" y="{height - 4}">{"".join(legend)}</text>')
    return (f'<svg class="chart voice" role="img" viewBox="0 0 {W} {height}" width="{W}" height="{height}">'
            f'<title>Share of voice over time</title>{"".join(parts)}</svg>')


def sparkline_svg(values: list[int], title: str) -> str:
    """Daily volume over a spike's history, the last bar (the spike day) in red."""
    width, height = 320, 46
    step = width / max(len(values), 1)
    vmax = max(values, default=1) or 1
    bars = "".join(
        f'<rect class="{"spike-bar" if i == len(values) - 1 else "history-bar"}" x="{i * step + step * 0.1:.1f}" '
        f'y="{height - height * v / vmax:.1f}" width="{step * 0.8:.1f}" height="{max(height * v / vmax, 0.5):.1f}"/>'
        for i, v in enumerate(values))
    return (f'<svg class="sparkline" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f'<title>{esc(title)}</title>{bars}</svg>')


def probs_svg(probs: list[float | None]) -> str:
    """A small stacked bar of positive / neutral / negative probabilities."""
    x, parts = 0.0, []
    for p, cls in zip(probs, LABELS):
        w = 90 * (p or 0)
        parts.append(f'<rect class="p-{cls}" x="{x:.1f}" y="0" width="{w:.1f}" height="10"/>')
        x += w
    return f'<svg class="probs" viewBox="0 0 90 10" width="90" height="10">{"".join(parts)}</svg>'


# --- the server ------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmsa-dashboard"
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urlsplit(self.path)
        if not self.server.host_allowed(self.headers.get("Host", "")):
            # DNS rebinding: a web page whose name resolves to 127.0.0.1 must not read the dashboard.
            response = Response(403, "text/plain; charset=utf-8", b"unexpected Host header")
        else:
            try:
                response = self.server.app.handle(url.path, parse_qs(url.query))
            except Exception as exc:  # noqa: BLE001 - one failed page must not stop the server
                self.log_error("%s: %r", url.path, exc)
                response = Response(500, "text/html; charset=utf-8",
                                    _page("Error", "", f"<p class='error'>{esc(type(exc).__name__)}: {esc(exc)}</p>").encode())
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "max-age=3600" if response.cache else "no-store")
        for key, value in {**SECURITY_HEADERS, **response.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if self.server.verbose:
            super().log_message(format, *args)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: Dashboard, host: str = "127.0.0.1", port: int = 8765, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.app = app
        self.verbose = verbose
        self.loopback = _is_loopback(host)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def host_allowed(self, header: str) -> bool:
        if not self.loopback:
            return True  # exposed on purpose (--host): any name the network uses for this machine
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return name.strip("[]") in ("127.0.0.1", "localhost", "::1")


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8765, cache: str | Path | None = None) -> None:
    """Run the dashboard until interrupted."""
    app = Dashboard(db, cache)
    try:
        server = DashboardServer(app, host, port, verbose=True)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    print(f"mmsa dashboard on {server.url} over {db} (read-only); Ctrl-C stops it.", file=sys.stderr)
    if server.loopback:
        print("Only this machine can open it. To reach it from another, tunnel it (ssh -L PORT:127.0.0.1:PORT host) "
              "or start it with --host 0.0.0.0: it has no login, so anyone who can reach the port reads the data.",
              file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
