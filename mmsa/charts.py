"""PNG charts for the trend, share-of-voice and spike reports, and the offline HTML summary.

Charts are drawn with matplotlib's Agg backend (no display needed). The HTML summary embeds
every chart as a base64 PNG and every table inline, so the one file reads offline.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mmsa import files, report  # noqa: E402

CHARTS = ("daily_brand_sentiment", "weekly_brand_sentiment", "share_of_voice", "sentiment_spikes")
MAX_BRANDS = 8  # more lines than this on one axis stop being readable; the busiest brands are drawn
HTML_MAX_ROWS = 50
ANNOTATED_SPIKES = 3  # per brand, the strongest; every spike day is still circled
# The summary's order: the questions in the order an analyst asks them (how is the brand doing, what
# happened, against whom, why), data quality last; reports not named here follow alphabetically.
SUMMARY_ORDER = ("daily_brand_sentiment", "sentiment_spikes", "brand_prevalence", "period_over_period", "weekly_brand_sentiment",
                 "share_of_voice", "top_posts", "breakdown_by_source", "breakdown_by_language",
                 "modality_disagreement", "disagreeing_posts", "image_status_mix", "unscored_posts", "rejected_rows", "runs",
                 "model_versions")


def summary_order() -> list[str]:
    """Every report, in the summary's order."""
    names = [name for name, _ in report.list_reports()]
    return [n for n in SUMMARY_ORDER if n in names] + [n for n in names if n not in SUMMARY_ORDER]


def _as_written(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """A figure function whose texts are drawn as written: matplotlib would read a brand named "$^$" as
    mathematics (and fail on it), "a$x$b" as an italic x."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> Figure:
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def _by_brand(rows: list[dict], limit: int = MAX_BRANDS) -> dict[str, list[dict]]:
    """Rows grouped by brand, the `limit` brands with the most posts first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(report.brand_name(r["brand"]), []).append(r)
    busiest = sorted(groups, key=lambda b: -sum(r["posts"] for r in groups[b]))[:limit]
    return {b: groups[b] for b in busiest}


def _label(brand: str | None) -> str:
    """A brand's name for a legend: "(no brand)" for untagged posts, as in the reports; a leading "_" gets a
    zero-width space before it, since matplotlib leaves labels starting with "_" out of legends."""
    name = report.brand_name(brand)
    return "\u200b" + name if name.startswith("_") else name


def _markers(values: list) -> dict:
    """plot() keywords: a marker on each of up to 60 points, beyond that only on points with no value either
    side, which no line segment would draw."""
    if len(values) <= 60:
        return {"marker": "."}
    lone = [i for i, v in enumerate(values) if v is not None
            and (i == 0 or values[i - 1] is None) and (i == len(values) - 1 or values[i + 1] is None)]
    return {"marker": ".", "markevery": lone}


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")


def _date_axis(ax) -> None:
    """Date ticks that fall on days for any span. With its default minticks=5, matplotlib's locator falls to
    hourly ticks for spans of 4-8 days and warns that it found no interval; and one day alone (a nightly
    headline) would sit on an axis years wide. Spans under 2 days are widened to 2, so that ticks fall on days.
    With nothing drawn there are no ticks (they would be hours of 1970-01-01)."""
    shared = ax.get_shared_x_axes().get_siblings(ax)  # an axis may have no points of its own (all NaN)
    first = min(a.dataLim.x0 for a in shared)  # (inf, -inf) while nothing is drawn on any of them
    last = max(a.dataLim.x1 for a in shared)
    if first > last:
        ax.xaxis.set_major_locator(matplotlib.ticker.NullLocator())
        return
    locator = mdates.AutoDateLocator(minticks=2, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    pad = (2 - (last - first)) / 2
    if pad > 0:
        ax.set_xlim(first - pad, last + pad)


def _filled(series: list[dict], key: str, step: timedelta) -> list[dict]:
    """The series with a row per day (or week) from its first to its last, with 0 posts and no shares where
    there were no posts: a line must not bridge a gap as if the days in it had posts."""
    have = {r[key]: r for r in series}
    out, at = [], min(have)
    while at <= max(have):
        out.append(have.get(at, {key: at, "posts": 0, "net_sentiment": None, "negative_share": None}))
        at += step
    return out


@_as_written
def trend_figure(rows: list[dict], period: str = "day") -> Figure:
    """Volume (top) and net sentiment (bottom) per brand over time, from the daily or weekly report."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(1, 1.3))
    brands = _by_brand(rows)
    for brand, series in brands.items():
        series = _filled(series, period, timedelta(days=7 if period == "week" else 1))
        x, posts, net = ([r[k] for r in series] for k in (period, "posts", "net_sentiment"))
        (line,) = top.plot(x, posts, label=_label(brand), **_markers(posts))
        bottom.plot(x, net, color=line.get_color(), label=_label(brand), **_markers(net))
    top.set_ylabel(f"posts per {period}")
    shown = len(brands) < len({r["brand"] for r in rows})
    top.set_title(f"Volume and net sentiment per brand and {period}"
                  + (f" (the {len(brands)} brands with most posts)" if shown else ""))
    bottom.axhline(0, color="grey", linewidth=0.8)
    bottom.set_ylim(-1.05, 1.05)
    bottom.set_ylabel("net sentiment\n(pos − neg) / (pos + neg)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if brands:
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        _no_data(top)
    _date_axis(bottom)
    fig.tight_layout()
    return fig


@_as_written
def share_of_voice_figure(rows: list[dict]) -> Figure:
    """100% stacked bars: each brand's share of all, positive and negative mentions (untagged posts have none)."""
    rows = sorted((r for r in rows if r["brand"] is not None), key=lambda r: -r["mentions"])
    bars = [("all mentions", "share_of_voice"), ("positive", "positive_share_of_voice"),
            ("negative", "negative_share_of_voice")]
    fig, ax = plt.subplots(figsize=(10, 3.2 + 0.15 * len(rows)))
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(rows):
        lefts = [sum(q[col] or 0 for q in rows[:i]) for _, col in bars]
        widths = [r[col] or 0 for _, col in bars]
        name = _label(r["brand"])
        ax.barh([b for b, _ in bars], widths, left=lefts, color=colors[i % len(colors)], label=name)
        for y, (left, width) in enumerate(zip(lefts, widths)):
            if width >= 0.06:
                ax.text(left + width / 2, y, f"{name}\n{width:.0%}", ha="center", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    total = sum(r["mentions"] for r in rows)
    ax.set_title(f"Share of voice ({total:,} mentions)")
    if rows:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(len(rows), 6), fontsize="small")
    else:
        _no_data(ax)
    fig.tight_layout()
    return fig


def _z(spike: dict) -> float:
    return max(spike["posts_z"] or 0, spike["negative_share_z"] or 0)


@_as_written
def spikes_figure(daily: list[dict], spikes: list[dict]) -> Figure:
    """Per brand (up to 4 with spikes, else the 2 busiest): daily volume bars, the negative share
    line, every spike day circled and the strongest labelled with kind and z-score."""
    spike_rows = [s for s in spikes if s["rank"] == 1]
    by_brand = _by_brand(daily, limit=len(daily) or 1)
    brands = [b for b in by_brand if any(report.brand_name(s["brand"]) == b for s in spike_rows)][:4] or list(by_brand)[:2]
    panels = max(len(brands), 1)  # an empty chart still has its axes, for the note
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False, sharex=True)
    if not brands:
        _no_data(axes[0, 0])
    for ax, brand in zip(axes[:, 0], brands):
        series = _filled(by_brand[brand], "day", timedelta(days=1))
        days = [r["day"] for r in series]
        ax.fill_between(days, [r["posts"] for r in series], step="mid", color="#9ecae1", label="posts")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("posts")
        share = ax.twinx()
        negative = [r["negative_share"] for r in series]
        share.plot(days, negative, color="#d62728", label="negative share", **_markers(negative))
        share.set_ylim(0, 1.05)
        share.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        share.set_ylabel("negative share", color="#d62728")
        mine = [s for s in spike_rows if report.brand_name(s["brand"]) == brand]
        shown = [s for s in mine if s["negative_share"] is not None]  # a volume spike of unlabelled posts has no share
        share.plot([s["day"] for s in shown], [s["negative_share"] for s in shown], "o", markersize=12,
                   markerfacecolor="none", markeredgecolor="black")
        for s in sorted(shown, key=_z, reverse=True)[:ANNOTATED_SPIKES]:
            share.annotate(f"{s['kind']}\nz={_z(s):.1f}", xy=(s["day"], s["negative_share"]), xytext=(0, 18),
                           textcoords="offset points", ha="center", fontsize=8, arrowprops={"arrowstyle": "->"})
        n = len(mine)
        ax.set_title(f"{brand}: {n} spike day{'s' * (n != 1)}" if n else f"{brand}: no spikes", loc="left")
        ax.grid(alpha=0.3)
    _date_axis(axes[-1, 0])
    fig.tight_layout()
    return fig


def _figure(name: str, con: duckdb.DuckDBPyConnection, params: dict, done: dict | None = None) -> Figure:
    """The chart of report `name`; `done` holds rows of reports already run with these filters."""
    done = {} if done is None else done

    def rows(report_name: str, report_params: dict) -> list[dict]:
        if report_name not in done:
            done[report_name] = report.run_report(report_name, con, **report_params).to_pylist()
        return done[report_name]

    if name in ("daily_brand_sentiment", "weekly_brand_sentiment"):
        return trend_figure(rows(name, params), "day" if name.startswith("daily") else "week")
    if name == "share_of_voice":
        return share_of_voice_figure(rows(name, params))
    if name == "sentiment_spikes":
        filters = {k: v for k, v in params.items() if k in report.FILTERS}
        return spikes_figure(rows("daily_brand_sentiment", filters), rows(name, params))
    raise ValueError(f"no chart for report {name!r}; charts exist for: {', '.join(CHARTS)}")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_chart(name: str, db: str | Path | duckdb.DuckDBPyConnection, out: str | Path, **params: object) -> Path:
    """Run report `name` (and what its chart needs) on `db` and write its chart as a PNG at `out`."""
    if isinstance(db, duckdb.DuckDBPyConnection):
        return files.write_bytes(out, _png(_figure(name, db, params)))
    with report.connect(db) as con:
        return files.write_bytes(out, _png(_figure(name, con, params)))


def headline(db: str | Path, chart_dir: str | Path, run_id: str | None = None) -> report.Headline:
    """report.headline_markdown with its trend and spike charts rendered into `chart_dir`."""
    chart_dir = Path(chart_dir)

    def draw() -> list[Path]:
        return [render_chart("daily_brand_sentiment", db, chart_dir / "trend.png"),
                render_chart("sentiment_spikes", db, chart_dir / "spikes.png")]

    return report.headline_markdown(db, run_id=run_id, draw=draw)


def _html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(report.cell(r[c], precise=False))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.doc { color: #555; white-space: pre-wrap; font-size: .85em; }
table { border-collapse: collapse; font-size: .8em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
img { max-width: 100%; }
nav a { margin-right: 1em; }
"""


def html_summary(db: str | Path, out: str | Path, **filters: object) -> Path:
    """Run every report with `filters` (brand, date_from, date_to, model_version) and write one
    self-contained HTML page, the brand trend and spikes first: each report's header, its table
    (first rows) and its chart."""
    bad = sorted(set(filters) - set(report.FILTERS))
    if bad:
        raise ValueError(f"the summary takes only the filters {', '.join(report.FILTERS)}, not {', '.join(bad)}")
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "none"
    sections, done = [], {}
    with report.connect(db) as con:
        for name in summary_order():
            table = report.run_report(name, con, **filters)
            done[name] = table.to_pylist()
            rows = done[name][:HTML_MAX_ROWS]
            parts = [f'<h2 id="{name}">{html.escape(name)}</h2>',
                     f'<p class="doc">{html.escape(report.describe(name))}</p>']
            if name in CHARTS and table.num_rows:
                png = base64.b64encode(_png(_figure(name, con, filters, done))).decode()
                parts.append(f'<img alt="{name} chart" src="data:image/png;base64,{png}">')
            more = f" (first {HTML_MAX_ROWS} shown)" if table.num_rows > HTML_MAX_ROWS else ""
            parts.append(f"<p>{table.num_rows} rows{more}</p>" + _html_table(rows, table.column_names))
            sections.append("\n".join(parts))
    nav = " ".join(f'<a href="#{n}">{n}</a>' for n in summary_order())
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>mmsa brand sentiment summary</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>Brand sentiment summary</h1>\n"
        f"<p>Database <code>{html.escape(str(db))}</code>; filters: {html.escape(shown)}; generated "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>\n<nav>{nav}</nav>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    return files.write_text(out, page)
