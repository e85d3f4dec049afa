"""The dashboard's pages: each view's HTML (filters form, charts, tables, post cards) and each table's CSV export.
Every value from the snapshot is escaped: post text is untrusted."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from mmsa import report
from mmsa.charts import MAX_BRANDS
from mmsa.dashboard.filters import Filters, with_view_settings
from mmsa.dashboard.queries import Queries, Table, filters_not_taken, run_query
from mmsa.dashboard.svg import esc, estimates_svg, fmt, pct, period_starts, probs_svg, sparkline_svg, trend_svg, voice_svg
from mmsa.schema import LABELS

HTML_ROWS = 500  # rows of a table shown on a page; its CSV export has them all
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


def _cached(images, url: str) -> bool:
    """Whether the image cache holds the picture at `url` (the thumbnail can be drawn)."""
    found = images.lookup(url)
    return found is not None and found.status == "ok"


def _safe_link(url: str | None) -> str | None:
    """An http(s) address to link to, else None (a javascript: or data: URL from a dump is never a link)."""
    if not url or urlsplit(url.strip()).scheme.lower() not in ("http", "https"):
        return None
    return url.strip()


class Pages(Queries):
    """The views over Queries' tables; with an image cache (`cache`), posts show their thumbnails."""

    def __init__(self, db: str | Path, cache: str | Path | None = None):
        super().__init__(db)
        self.images = None
        if cache is not None:
            from mmsa.images.cache import ImageCache

            self.images = ImageCache(cache)

    def _chrome(self, con, path: str, f: Filters, title: str, body: str, extra_fields: str = "") -> str:
        model = self.default_model(con)
        options = self.options(con, f.model_version or model)
        nav = " ".join(f'<a href="{esc(p)}?{esc(f.query())}"{" class=current" if p == path else ""}>{esc(t)}</a>'
                       for p, t in VIEWS)

        def select(name: str, label: str, values: list[tuple[str, str]]) -> str:
            current = getattr(f, name) if name in Filters.NAMES else f.extra.get(name)
            if current and current not in {v for v, _ in values}:  # a brand without posts here: shown, not "all"
                values = [*values, (current, f"{current} (0)")]
            opts = "".join(f'<option value="{esc(v)}"{" selected" if v == (current or "") else ""}>{esc(t)}</option>'
                           for v, t in values)
            return f'<label>{esc(label)} <select name="{name}">{opts}</select></label>'

        def listed(field_: str) -> list[tuple[str, str]]:
            return [("", "all")] + [(o["value"], f"{o['value']} ({o['posts']:,})")
                                    for o in options[field_] if o["value"] is not None]

        versions = [("", f"latest ({model})")] + [(v["model_version"], v["model_version"]) for v in self.model_versions(con)]
        first, last = self.span(con, replace(f, date_from=None, date_to=None), f.model_version or model)
        form = (  # autocomplete off: Back shows the filters of the page it shows, not the form's last edit
            f'<form method="get" action="{esc(path)}" class="filters" autocomplete="off">'
            + select("brand", "Brand", listed("brand"))
            + f'<label>From <input type="date" name="date_from" value="{esc(f.date_from)}"></label>'
            + f'<label>To <input type="date" name="date_to" value="{esc(f.date_to)}"></label>'
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
        return page(title, header, body)

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
        first, last = self.span(con, f, model)
        panels = []
        if trend.rows and first and last:
            periods = period_starts(first, last, period)
            by_brand: dict = {}
            for r in trend.rows:
                by_brand.setdefault(r["brand"], {})[r["period_start"]] = r
            busiest = [b["brand"] for b in brands.rows][:MAX_BRANDS]
            for brand in busiest:
                def link(start: date, brand=brand) -> str | None:
                    if brand is None:  # posts without a brand cannot be filtered for: no link
                        return None
                    end = start + timedelta(days=6) if period == "week" else start
                    end = min(end, last)
                    return "/posts?" + f.query(brand=brand, date_from=max(start, first).isoformat(), date_to=end.isoformat())
                panels.append(trend_svg(brand, by_brand[brand], periods, period, link))
            if len(brands.rows) > MAX_BRANDS:
                panels.append(f"<p class='meta'>The {MAX_BRANDS} brands with most posts are drawn; pick a brand to see another.</p>")
        body = (
            f"<h2>Brand overview</h2><p class='definition'>{esc(ESTIMATE_DEFINITION)}</p>"
            + _estimates(brands.rows)
            + f"<p class='definition'>{esc(NET_DEFINITION)}</p>"
            f"<p class='meta'>Bars: posts per {esc(period)} (click one to read its posts). Line: net sentiment, "
            "its 95% band shaded. Days are UTC.</p>"
            + ("".join(panels) if panels else "<p>No posts match these filters.</p>")
            + self._table_html(brands, f)
            + "<details><summary>Every brand and " + esc(period) + "</summary>" + self._table_html(trend, f) + "</details>"
        )
        return self._chrome(con, "/", f, "Overview", body)

    def page_spikes(self, con, f: Filters, query) -> str:
        f = with_view_settings("spikes", f, query)
        spikes = self.table_spikes(con, f)
        settings = self.spike_settings(f)
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
            name = report.brand_name(brand)
            link = "/posts?" + f.query(brand=brand, date_from=day.isoformat(), date_to=day.isoformat())
            # posts without a brand cannot be filtered for: the day's heading and no link to all its posts
            heading = f'<a class="spike-day" href="{esc(link)}">{esc(day)}</a>' if brand is not None else esc(day)
            every = f'<p><a href="{esc(link)}">All posts of {esc(name)} on {esc(day)}</a></p>' if brand is not None else ""
            drivers = "".join(
                f"<li><code>{esc(r['post_id'])}</code> <span class='label {esc(r['brand_label'])}'>{esc(r['brand_label'])}</span> "
                f"engagement {r['engagement']:,}: {esc(r['text'])}</li>" for r in rows)
            cards.append(
                f'<article class="spike"><h3>{esc(name)} · {heading} · {esc(s["kind"])}</h3>'
                f'<p>{s["posts"]:,} posts against a mean of {fmt(s["mean_posts"], 1)} over the {s["history_days"]} days before '
                f'(z = {fmt(s["posts_z"], 2)}); negative share {pct(s["negative_share"])} against {pct(s["mean_negative_share"])} '
                f'(z = {fmt(s["negative_share_z"], 2)}), counted from labels.</p>'
                + _estimate_sentence(s)
                + sparkline_svg([history.get((brand, d), 0) for d in window_days], f"{name}: posts per day, the "
                                f"{s['history_days']} days judged on and {day}")
                + f"<p class='meta'>Driving posts (negative first when the negative share spiked, then by engagement):</p><ol>{drivers}</ol>"
                + every + "</article>")
        extra = (f'<label>Window <input type="number" name="window" min="3" max="365" value="{settings["window"]}"></label>'
                 f'<label>Threshold z <input type="number" name="threshold" step="any" min="0.5" max="50" value="{settings["threshold"]}"></label>')
        body = (
            "<h2>Spikes</h2><p class='definition'>A brand-day is a spike when its volume, or its negative share (on days "
            f"with at least 5 posts), lies {esc(settings['threshold'])} or more standard deviations (z) above the mean of "
            f"the {settings['window']} days before it (days without posts count as 0; a day needs "
            f"{min(7, settings['window'])} days of history). "
            "The bars under each spike are that history, the spike day in red.</p>"
            + ("".join(cards) if cards else "<p>No spikes with these filters.</p>")
            + self._table_html(spikes, f)
        )
        return self._chrome(con, "/spikes", f, "Spikes", body, extra)

    def page_posts(self, con, f: Filters, query) -> str:
        f = with_view_settings("posts", f, query)
        posts = self.table_posts(con, f)
        what = " · ".join(esc(x) for x in (f.brand or "every brand", _range(f), f.source, f.lang, f.extra.get("label")) if x)
        label = ("<label>Label toward the brand <select name='label'>" + "".join(
            f'<option value="{v}"{" selected" if v == (f.extra.get("label") or "") else ""}>{v or "any"}</option>'
            for v in ("", *LABELS)) + "</select></label>"
                 f'<input type="hidden" name="limit" value="{esc(f.extra["limit"])}">')  # kept by Apply, as documented
        body = (f"<h2>Posts: {what}</h2><p class='meta'>The {len(posts.rows)} most engaging "
                f"(at most {f.extra['limit']}; engagement = likes + shares + replies). Labels and probabilities: toward "
                "the brand (what the label filter and every brand figure read), fused, text alone and image alone.</p>"
                + ("<div class='posts'>" + "".join(self._post_card(p) for p in posts.rows) + "</div>"
                   if posts.rows else "<p>No posts match.</p>")
                + self._table_html(posts, f, ["post_id", "created_at", "brand", "source", "lang", "author",
                                                      "brand_label", "label", "text_label", "image_label", "engagement",
                                                      "text"]))
        return self._chrome(con, "/posts", f, "Posts", body, label)

    def _post_card(self, p: dict) -> str:
        if self.images is not None and p["image_status"] == "ok" and p["image_url"] and _cached(self.images, p["image_url"]):
            thumb = f'<img src="/thumb?{esc(urlencode({"url": p["image_url"]}))}" alt="image of {esc(p["post_id"])}" loading="lazy">'
        else:  # a cache given but without this image (pruned, another run's): said, not a broken picture
            why = (f"not scored ({p['unscored_reason']}: {p['lang']})" if p["unscored_reason"] else
                   p["image_status"] if p["image_status"] != "ok" else
                   "not in the image cache" + (" (start with --cache)" if self.images is None else ""))
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
                    f"<td>{probs_svg(probs)} {' / '.join(fmt(x, 2) for x in probs)}</td></tr>")

        return (
            f'<article class="post" data-post-id="{esc(p["post_id"])}"><div class="thumb">{thumb}</div><div class="body">'
            f'<p class="meta"><code>{esc(p["post_id"])}</code> · {esc(p["brand"])} · {esc(p["source"])} · {esc(p["lang"])} · '
            f'{esc(_cell(p["created_at"]))} · by <span class="author">{esc(p["author"])}</span></p>'
            f'<p class="text">{esc(p["text"])}</p>'
            f'<table class="preds"><tr><th></th><th>label</th><th>p positive / neutral / negative</th></tr>'
            + (prediction("toward " + esc(p["brand"]), "brand_") if p["brand"] is not None else "")
            + prediction("fused", "") + prediction("text", "text_") + prediction("image", "image_")
            + f'</table><p class="meta">engagement {p["engagement"]:,} ({_cell(p["likes"]) or 0} likes, '
            f'{_cell(p["shares"]) or 0} shares, {_cell(p["replies"]) or 0} replies){original}</p></div></article>'
        )

    def page_voice(self, con, f: Filters, query) -> str:
        voice = self.table_voice(con, f)
        model = self.default_model(con)
        period = self.period(con, f, model)
        first, last = self.span(con, f, model)
        chart = voice_svg(voice.rows, period_starts(first, last, period)) if voice.rows and first and last else "<p>No posts match.</p>"
        body = ("<h2>Share of voice</h2><p class='definition'>Each brand's mentions as a share of all brands' mentions in "
                f"the same {esc(period)} (untagged posts are no brand's), with its 95% Wilson interval (shaded). A brand filter keeps that brand's line, "
                "its share still of all brands.</p>" + chart + self._table_html(voice, f)
                + f"<p class='definition'>{esc(NET_DEFINITION)}</p>")
        return self._chrome(con, "/voice", f, "Share of voice", body)

    def page_disagreement(self, con, f: Filters, query) -> str:
        f = with_view_settings("gallery", f, query)
        rates = self.table_disagreement(con, f)
        gallery = self.table_gallery(con, f)
        body = ("<h2>Text vs image</h2><p class='definition'>Among posts with both a text and an image prediction: "
                "how often the two labels differ, and how often they point opposite ways (one positive, one "
                "negative: often sarcasm, e.g. praise over a photo of a broken product). Rates with 95% Wilson intervals.</p>"
                + self._table_html(rates, f)
                + f"<h3>Gallery: opposite posts, most engaging first ({len(gallery.rows)} shown, at most {f.extra['limit']}"
                + (f"; {esc(f.extra['label'])} toward the brand" if f.extra.get("label") else "") + ")</h3>"
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


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        return f"{value:.4f}"
    return report.cell(value, precise=False)


def _estimate_sentence(row: dict) -> str:
    """A spike day's estimated negative share with its interval, in words (brand_prevalence)."""
    if row["estimated_negative_share"] is None:
        return "<p class='estimate'>No post of the day has a label toward the brand: no estimate.</p>"
    return (f"<p class='estimate'>Estimated negative share {pct(row['estimated_negative_share'])} (95%: "
            f"{pct(row['estimated_negative_share_low'])} to {pct(row['estimated_negative_share_high'])}; "
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


def page(title: str, header: str, body: str) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)} · mmsa dashboard</title><link rel='stylesheet' href='/static/dashboard.css'></head>"
            f"<body>{header}<main>{body}</main><footer>mmsa dashboard: read-only over the analyst snapshot; "
            "SQL in sql/reports and sql/dashboard; docs/analysts.md.</footer></body></html>")


def _estimates(rows: list[dict]) -> str:
    """The overview's estimates chart; where no post has a label (languages the model does not cover), why not."""
    if any(r["estimated_negative_share"] is not None for r in rows):
        return estimates_svg(rows)
    return "<p class='estimate'>No post here has a label (languages the model does not cover): no estimate.</p>" if rows else ""
