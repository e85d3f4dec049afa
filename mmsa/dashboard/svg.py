"""The dashboard's charts, drawn on the server as inline SVG (no script): trend panels, estimated shares, share
of voice, spike sparklines, probability bars; and the escaping and number formats they share with the pages."""

from __future__ import annotations

import html
from datetime import date, timedelta

from mmsa.charts import MAX_BRANDS
from mmsa.report import brand_name
from mmsa.dashboard.queries import wilson
from mmsa.schema import LABELS

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728")


def esc(value: object) -> str:
    """Text for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _band_points(seg: list[tuple[int, dict]], x, y, value: str, low: str, high: str) -> tuple[str, str]:
    """A run of (period index, row) as the points of its 95% band (a polygon: `high` across, `low` back) and
    of its line (`value`)."""
    upper = " ".join(f"{x(i):.1f},{y(r[high]):.1f}" for i, r in seg)
    lower = " ".join(f"{x(i):.1f},{y(r[low]):.1f}" for i, r in reversed(seg))
    return f"{upper} {lower}", " ".join(f"{x(i):.1f},{y(r[value]):.1f}" for i, r in seg)


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def period_starts(first: date, last: date, period: str) -> list[date]:
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
    parts = [f'<text class="panel-title" x="{LEFT}" y="14">{esc(brand_name(brand))}</text>',
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
        tip = (f"{brand_name(brand)} {p} ({period}): {r['posts']:,} posts, {r['positive']:,} positive, "
               f"{r['negative']:,} negative; "
               f"net sentiment {fmt(r['net_sentiment'], 2)} (95%: {fmt(r['net_low'], 2)} to {fmt(r['net_high'], 2)})")
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
        band, line = _band_points(seg, x, y, "net_sentiment", "net_low", "net_high")
        parts.insert(4, f'<polygon class="band" points="{band}"/>')
        parts.append(f'<polyline class="net" points="{line}"/>')
    if len(points) <= 120:
        parts += [f'<circle class="net-point" cx="{x(i):.1f}" cy="{y(net):.1f}" r="2.5"/>'
                  for i, net in ((i, r["net_sentiment"]) for i, r in points)]
    parts.append(f'<text class="axis-label" x="8" y="{net_top + net_h / 2}" transform="rotate(-90 8 {net_top + net_h / 2})" '
                 'text-anchor="middle">net sentiment</text>')
    parts.append(_ticks(periods, x, net_top + net_h))
    return (f'<svg class="chart trend" role="img" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
            f'data-brand="{esc(brand)}"><title>{esc(brand_name(brand))}: posts and net sentiment per {period}</title>'
            f'{"".join(parts)}</svg>')


def estimates_svg(rows: list[dict]) -> str:
    """Per brand, one bar of the estimated positive / neutral / negative shares, the negative share's 95%
    interval as a whisker and the counted negative share as a dashed tick; the estimated and counted net
    sentiment (positive − negative share) beside it."""
    rows = [r for r in rows if r["estimated_negative_share"] is not None][:MAX_BRANDS]
    x0, width, row_h, top = 190, 520, 28, 22
    height = top + row_h * len(rows) + 8
    parts = [f'<text class="tick" x="{x0}" y="12">0%</text>',
             f'<text class="tick" x="{x0 + width}" y="12" text-anchor="end">100%</text>']
    for i, r in enumerate(rows):
        y = top + i * row_h
        x = x0
        for label in LABELS:
            share = r[f"estimated_{label}_share"]
            tip = (f"{brand_name(r['brand'])}: estimated {label} share {pct(share)} "
                   f"(95%: {pct(r[f'estimated_{label}_share_low'])} to {pct(r[f'estimated_{label}_share_high'])}); "
                   f"counted {pct(r[label] / r['labelled'])}")
            parts.append(f'<rect class="p-{label}" x="{x:.1f}" y="{y}" width="{width * share:.1f}" height="16">'
                         f'<title>{esc(tip)}</title></rect>')
            x += width * share
        # the negative segment ends at 100%, so its share's bounds sit at 1 - high .. 1 - low
        low, high = (x0 + width * (1 - r[f"estimated_negative_share_{end}"]) for end in ("high", "low"))
        counted = x0 + width * (1 - r["negative"] / r["labelled"])  # shares are of labelled posts, as everywhere
        counted_net = (r["positive"] - r["negative"]) / r["labelled"]
        parts += [f'<line class="whisker" x1="{low:.1f}" x2="{high:.1f}" y1="{y + 8}" y2="{y + 8}"/>',
                  f'<line class="whisker" x1="{low:.1f}" x2="{low:.1f}" y1="{y + 3}" y2="{y + 13}"/>',
                  f'<line class="whisker" x1="{high:.1f}" x2="{high:.1f}" y1="{y + 3}" y2="{y + 13}"/>',
                  f'<line class="counted" x1="{counted:.1f}" x2="{counted:.1f}" y1="{y - 2}" y2="{y + 18}"/>',
                  f'<text class="panel-title" x="{x0 - 8}" y="{y + 13}" text-anchor="end">'
                  f'{esc(brand_name(r["brand"]))}</text>',
                  f'<text class="tick" x="{x0 + width + 8}" y="{y + 12}">net {fmt(r["estimated_net"], 2)} (95%: '
                  f'{fmt(r["estimated_net_low"], 2)} to {fmt(r["estimated_net_high"], 2)}); counted {counted_net:.2f}</text>']
    return (f'<svg class="chart estimates" role="img" viewBox="0 0 {W} {height}" width="{W}" height="{height}">'
            f'<title>Estimated shares per brand with the negative share\'s 95% interval; counted negative share dashed'
            f'</title>{"".join(parts)}</svg>')


def voice_svg(rows: list[dict], periods: list[date]) -> str:
    """Each brand's share of voice over time, a line with its shaded 95% band; the busiest brands first. A brand
    without mentions in a period where others have some is at 0 then; a period without rows (no mentions at all,
    or none of the one brand filtered for) is a gap; a lone period is a dot with its interval."""
    top, h = 16, 240
    height = top + h + 40
    step = (W - LEFT - RIGHT) / max(len(periods), 1)

    def x(i: float) -> float:
        return LEFT + (i + 0.5) * step

    totals: dict = {}
    all_mentions = {r["period_start"]: r["all_mentions"] for r in rows}
    for r in rows:
        totals[r["brand"]] = totals.get(r["brand"], 0) + r["mentions"]
    brands = sorted(totals, key=lambda b: -totals[b])[:len(COLORS)]
    series = {}
    for brand in brands:
        mine = {r["period_start"]: r for r in rows if r["brand"] == brand}
        points = []
        for p in periods:
            if p in mine or p not in all_mentions:
                points.append(mine.get(p))
            else:  # other brands have mentions then, this one none
                low, high = wilson(0, all_mentions[p])
                points.append({"share_of_voice": 0.0, "share_low": low, "share_high": high})
        series[brand] = points
    ymax = min(1.0, max((r["share_high"] for points in series.values() for r in points if r), default=1) * 1.1) or 1

    def y(v: float) -> float:
        return top + (1 - v / ymax) * h

    parts = []
    for v in (0, ymax / 2, ymax):
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>')
    legend = []
    for color, (brand, points) in zip(COLORS, series.items()):
        title = f"<title>{esc(brand_name(brand))}</title>"
        segments, current = [], []
        for i, r in enumerate(points + [None]):  # the None closes the last segment
            if r is not None:
                current.append((i, r))
            elif current:
                segments.append(current)
                current = []
        for seg in segments:
            if len(seg) == 1:  # a one-point polyline is invisible
                (i, r), = seg
                parts.insert(0, f'<line stroke="{color}" stroke-opacity="0.3" stroke-width="3" x1="{x(i):.1f}" '
                                f'x2="{x(i):.1f}" y1="{y(r["share_high"]):.1f}" y2="{y(r["share_low"]):.1f}"/>')
                parts.append(f'<circle fill="{color}" cx="{x(i):.1f}" cy="{y(r["share_of_voice"]):.1f}" r="3">'
                             f'{title}</circle>')
                continue
            band, line = _band_points(seg, x, y, "share_of_voice", "share_low", "share_high")
            parts.insert(0, f'<polygon fill="{color}" fill-opacity="0.15" points="{band}"/>')
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{line}">{title}</polyline>')
        legend.append(f'<tspan fill="{color}">■ </tspan><tspan>{esc(brand_name(brand))}  </tspan>')
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
