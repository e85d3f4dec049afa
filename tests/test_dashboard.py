"""`mmsa dashboard`: a real HTTP server on 127.0.0.1 over a real snapshot file (tests/dashboarddata.py),
read over HTTP and driven in headless Chromium (Playwright, the system's chromium)."""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import date
from pathlib import Path
from xml.etree import ElementTree

import dashboarddata
import pyarrow as pa
import pytest
import reportdata
from browser import CHROMIUM_ARGS, chromium_path
from dashboarddata import FORMULA_TEXT, IMG_AUTHOR, JS_LINK, MARKUP_BRAND, SCRIPT_TEXT

from mmsa import publish, store
from mmsa.dashboard.queries import net_interval, wilson
from mmsa.dashboard.server import Dashboard, DashboardServer
from mmsa.dashboard.svg import estimates_svg, trend_svg, voice_svg
from mmsa.cli import build_parser
from mmsa.schema import SCORED_SCHEMA

VIEWS = ["/", "/spikes", "/voice", "/disagreement", "/quality",
         "/posts?date_from=2024-03-15&date_to=2024-03-15",
         "/spikes?threshold=1"]  # a low threshold makes 03-15 a spike, the <script> post its top driver


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    return dashboarddata.build(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def server(planted):
    snapshot, cache = planted
    srv = DashboardServer(Dashboard(snapshot, cache), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def csv_rows(server, path: str) -> list[dict]:
    status, headers, body = get(server, path)
    assert status == 200 and headers["Content-Type"].startswith("text/csv"), body[:300]
    return list(csv.DictReader(io.StringIO(body.decode())))


# --- numbers -----------------------------------------------------------------------------------


def test_wilson_interval_matches_worked_values():
    """Known Wilson 95% intervals (e.g. 0 of 10: 0 to 0.2775; 5 of 10: 0.2366 to 0.7634); no posts, no interval."""
    assert wilson(0, 10) == (0.0, pytest.approx(0.27754, abs=1e-4))
    assert wilson(5, 10) == (pytest.approx(0.23659, abs=1e-4), pytest.approx(0.76341, abs=1e-4))
    assert wilson(80, 100) == (pytest.approx(0.71117, abs=1e-4), pytest.approx(0.86663, abs=1e-4))
    assert wilson(0, 0) == (None, None)
    low, high = net_interval(8, 2)  # p = 0.8 of 10: net 0.6
    assert (low, high) == (pytest.approx(2 * 0.49016 - 1, abs=1e-4), pytest.approx(2 * 0.94332 - 1, abs=1e-4))
    assert low < 0.6 < high


def test_trend_csv_carries_the_planted_counts_and_their_intervals(server):
    """The overview's table per week: acme's planted counts (plus week 2's two hostile posts) and Wilson bands."""
    rows = csv_rows(server, "/csv/trend?brand=acme&period=week")
    assert [(r["period_start"], r["posts"], r["positive"], r["negative"]) for r in rows] == [
        ("2024-03-04", "34", "17", "7"), ("2024-03-11", "44", "19", "14")]
    week1 = rows[0]
    assert float(week1["net_sentiment"]) == pytest.approx(10 / 24)
    low, high = net_interval(17, 7)
    assert (float(week1["net_low"]), float(week1["net_high"])) == (pytest.approx(low), pytest.approx(high))
    daily = csv_rows(server, "/csv/trend?brand=globex&source=instagram&lang=de&period=day")
    assert len(daily) == 7 and {r["posts"] for r in daily} == {"2"}  # globex's German week


def test_brands_table_has_estimated_shares_with_intervals_beside_the_counts(server):
    """Each brand's estimated shares over the selected days (report brand_prevalence, per total) with 95%
    intervals; the counted labels beside them. The planted snapshot has no quantification statistics: PCC."""
    brands = {r["brand"]: r for r in csv_rows(server, "/csv/brands?date_to=2024-03-10")}
    acme = brands["acme"]
    assert (acme["posts"], acme["positive"], acme["negative"]) == ("34", "17", "7")
    assert acme["method"] == "pcc (model has no quantification statistics)"
    shares = {lab: float(acme[f"estimated_{lab}_share"]) for lab in ("positive", "neutral", "negative")}
    assert math.fsum(shares.values()) == pytest.approx(1)
    # PCC = the mean probability: 17 posts at 0.8 / 0.15 / 0.05, 10 at 0.2 / 0.6 / 0.2, 7 at 0.05 / 0.15 / 0.8
    # (the most positive post, 0.96 / 0.03 / 0.01, is one of the 17).
    assert shares["negative"] == pytest.approx((16 * 0.05 + 0.01 + 10 * 0.2 + 7 * 0.8) / 34)
    for name in ("positive_share", "neutral_share", "negative_share", "net"):
        low, mid, high = (float(acme[f"estimated_{name}{end}"]) for end in ("_low", "", "_high"))
        assert low < mid < high
    assert float(acme["estimated_net"]) == pytest.approx(shares["positive"] - shares["negative"])
    status, _, body = get(server, "/?date_to=2024-03-10")
    page = body.decode()
    assert status == 200 and '<svg class="chart estimates"' in page and "Estimated shares" in page
    assert page.count('class="whisker"') == 3 * 2 and page.count('class="counted"') == 2  # acme and globex


def test_spike_cards_show_the_estimated_negative_share_with_its_interval(server):
    rows = csv_rows(server, "/csv/spikes?brand=acme")
    low, est, high = (float(rows[0][f"estimated_negative_share{end}"]) for end in ("_low", "", "_high"))
    assert low < est < high and float(rows[0]["negative_share"]) == 0.8
    page = get(server, "/spikes?brand=acme")[2].decode()
    assert f"Estimated negative share {est:.0%} (95%: {low:.0%} to {high:.0%}; pcc" in page


def test_share_of_voice_and_disagreement_rates_have_intervals(server):
    """Shares of voice per week sum to 1 with each brand's interval around it; disagreement rates likewise."""
    voice = csv_rows(server, "/csv/voice?period=week&date_to=2024-03-10")
    assert [(r["brand"], r["mentions"], r["all_mentions"]) for r in voice] == [("acme", "34", "48"), ("globex", "14", "48")]
    assert math.fsum(float(r["share_of_voice"]) for r in voice) == pytest.approx(1)
    for r in voice:
        assert float(r["share_low"]) < float(r["share_of_voice"]) < float(r["share_high"])
    rates = {r["brand"]: r for r in csv_rows(server, "/csv/disagreement")}
    assert (rates["globex"]["disagreeing"], rates["globex"]["posts_with_both"]) == ("7", "35")
    assert float(rates["globex"]["disagreement_rate_low"]) == pytest.approx(wilson(7, 35)[0])


def _voice_marks(svg: str) -> dict[str, list[list[tuple[float, float]]]]:
    """Per brand of a share-of-voice SVG, its polylines and dots as lists of (x, y)."""
    marks: dict = {}
    for el in ElementTree.fromstring(svg).iter():
        if el.tag == "polyline":
            points = [tuple(map(float, xy.split(","))) for xy in el.get("points").split()]
        elif el.tag == "circle":
            points = [(float(el.get("cx")), float(el.get("cy")))]
        else:
            continue
        marks.setdefault(el.find("title").text, []).append(points)
    return marks


def test_share_of_voice_over_time_drops_to_zero_breaks_at_empty_periods_and_dots_lone_ones():
    """acme has mentions on 03-01..03-03 and 03-05, globex on 03-01 and 03-03 and nobody on 03-04: globex is at 0
    on 03-02 and 03-05 (acme had mentions then), no line crosses 03-04, and 03-05 is a dot for each brand."""
    def row(day: int, brand: str, k: int, n: int) -> dict:
        low, high = wilson(k, n)
        return {"period_start": date(2024, 3, day), "brand": brand, "mentions": k, "all_mentions": n,
                "share_of_voice": k / n, "share_low": low, "share_high": high}

    rows = [row(1, "acme", 3, 4), row(1, "globex", 1, 4), row(2, "acme", 2, 2), row(3, "acme", 1, 2),
            row(3, "globex", 1, 2), row(5, "acme", 2, 2)]
    svg = voice_svg(rows, [date(2024, 3, d) for d in range(1, 6)])
    marks = _voice_marks(svg)
    (acme_line, acme_dot), (globex_line, globex_dot) = marks["acme"], marks["globex"]
    zero = globex_dot[0][1]  # globex has 0% of 03-05's mentions
    assert len(acme_line) == len(globex_line) == 3 and len(acme_dot) == len(globex_dot) == 1
    assert globex_line[1][1] == zero and acme_dot[0][1] < zero
    assert zero == float(re.search(r'y1="([\d.]+)"[^>]*/><text class="tick"[^>]*>0%<', svg).group(1))


def test_share_of_voice_page_draws_a_brand_of_one_day(server):
    """The markup-named brand has posts on 03-15 only: a line at 0 on the other 13 days, not an invisible point;
    so too when the page is filtered to that brand (the other brands' mentions are then not in the rows)."""
    for query in ("period=day", f"period=day&{urllib.parse.urlencode({'brand': MARKUP_BRAND})}"):
        page = get(server, f"/voice?{query}")[2].decode()
        svg = re.search(r'<svg class="chart voice".*?</svg>', page, re.S).group(0)
        (line,) = _voice_marks(svg)[MARKUP_BRAND]
        assert len(line) == 14 and len({y for _, y in line}) == 2, query


def test_posts_without_a_brand_are_named_so_in_chart_tooltips_and_legends():
    """Untagged posts are "(no brand)" in the overview's tooltips and estimates, not "None"."""
    day = date(2024, 3, 1)
    trend = trend_svg(None, {day: {"posts": 3, "positive": 2, "negative": 1, "net_sentiment": 1 / 3, "net_low": -0.4,
                                   "net_high": 0.8}}, [day], "day", lambda start: None)
    estimate = {"brand": None, "posts": 3, "labelled": 3, "positive": 2, "negative": 1, "neutral": 0}
    estimate |= {f"estimated_{name}{end}": 0.3 for name in ("positive_share", "neutral_share", "negative_share", "net")
                 for end in ("", "_low", "_high")}
    for svg in (trend, estimates_svg([estimate])):
        assert "None" not in svg and "(no brand)" in svg
    assert "(no brand) 2024-03-01 (day): 3 posts" in trend


def test_the_estimates_chart_counts_shares_of_labelled_posts_as_the_reports_do():
    """A brand of 5 posts, one in a language the model does not cover: counted shares are of the 4 labelled."""
    estimate = {"brand": "acme", "posts": 5, "labelled": 4, "positive": 1, "negative": 2, "neutral": 1}
    estimate |= {f"estimated_{name}{end}": 0.3 for name in ("positive_share", "neutral_share", "negative_share", "net")
                 for end in ("", "_low", "_high")}
    svg = estimates_svg([estimate])
    assert "counted 25%" in svg and "counted 50%" in svg and "counted 20%" not in svg


def test_posts_behind_a_day_most_engaging_first_with_every_prediction(server):
    """The posts of the spike day, as the click on its bar lists them."""
    rows = csv_rows(server, "/csv/posts?brand=acme&date_from=2024-03-14&date_to=2024-03-14")
    assert len(rows) == 10
    assert [r["post_id"] for r in rows[:3]] == ["acme-0314-09", "acme-0314-08", "acme-0314-07"]
    first = rows[0]
    assert (first["label"], first["text_label"], first["image_label"], first["engagement"]) == (
        "negative", "negative", "negative", "801")
    assert float(first["p_negative"]) == 0.8
    negatives = csv_rows(server, "/csv/posts?brand=acme&date_from=2024-03-14&date_to=2024-03-14&label=negative&limit=3")
    assert [r["label"] for r in negatives] == ["negative"] * 3
    gallery = csv_rows(server, "/csv/gallery")
    assert len(gallery) == 8 and gallery[0]["post_id"] == reportdata.SARCASM_TOP
    _, _, body = get(server, "/csv/posts?brand=nobody")  # no rows: still every column's name
    assert body.decode().splitlines() == [",".join(rows[0])]


def test_filter_options_count_a_post_naming_two_brands_once_under_its_source_and_language(tmp_path):
    import duckdb

    from mmsa.dashboard.filters import Filters
    from mmsa.dashboard.queries import run_query

    db = reportdata.build(tmp_path / "two.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE scored_posts SET brands = ['acme', 'globex'] WHERE post_id = 'acme-0314-00'")
        options = {(r["field"], r["value"]): r["posts"] for r in run_query(con, "filter_options", Filters(), "v2")}
        for field in ("source", "lang"):
            truth = dict(con.execute(f"SELECT {field}, count(DISTINCT post_id) FROM post_sentiment "
                                     f"WHERE model_version = 'v2' GROUP BY 1").fetchall())
            assert {v: n for (f, v), n in options.items() if f == field} == truth, field  # not (post, brand) rows


def test_the_quality_page_says_its_runs_and_refused_rows_are_dated_by_the_run(server):
    """Filtered on the days of the posts, the refused rows and the runs read "0 rows": they are dated by the run."""
    status, _, body = get(server, "/quality?date_from=2024-03-01&date_to=2024-03-22")
    page = body.decode()
    assert status == 200
    assert "Input rows refused, per run and reason (dates: the day a run refused them)" in page
    assert "Scoring runs (dates: the day a run started)" in page


def test_spikes_view_lists_the_spike_with_z_scores_and_history(server):
    """The spike page: the planted day, its z-scores and the days it was judged on."""
    rows = csv_rows(server, "/csv/spikes?brand=acme")
    assert {r["day"] for r in rows} == {"2024-03-14"} and rows[0]["history_days"] == "10"
    assert float(rows[0]["posts_z"]) == pytest.approx(4.7434, abs=1e-3)
    status, _, body = get(server, "/spikes?brand=acme")
    page = body.decode()
    assert status == 200 and "z = 4.74" in page and "over the 10 days before" in page
    assert 'href="/posts?brand=acme&amp;date_from=2024-03-14&amp;date_to=2024-03-14"' in page
    assert csv_rows(server, "/csv/spikes?brand=acme&threshold=20") == []


def test_a_spike_of_untagged_posts_is_named_no_brand_and_links_to_no_other_brands_posts(tmp_path):
    """With acme's posts untagged, its planted spike is a spike of brand NULL: its card names "(no brand)" (it named
    nobody) and has no link to "all posts" of the day, which no filter can select (it listed globex's posts)."""
    rows = [{**r, "brands": [], "brand_scores": []} if r["post_id"].startswith("acme") else r for r in reportdata.scored_rows()]
    db = tmp_path / "untagged.duckdb"
    with store.connect(db) as con:
        con.register("rows", pa.Table.from_pylist(rows, schema=SCORED_SCHEMA))
        con.execute("INSERT INTO scored_posts SELECT * FROM rows")
    srv = DashboardServer(Dashboard(publish.publish_snapshot(db), tmp_path / "cache"), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, _, body = get(srv, "/spikes")
    finally:
        srv.shutdown()
        srv.server_close()
    page = body.decode()
    assert status == 200 and "<h3>(no brand) · 2024-03-14 · " in page
    assert "date_from=2024-03-14" not in page and "All posts of" not in page


# --- safety ------------------------------------------------------------------------------------


def test_hostile_text_author_link_and_brand_are_escaped_in_every_view(server):
    """No markup from a post reaches a page as markup; every page forbids scripts by its CSP."""
    for path in VIEWS:
        status, headers, body = get(server, path)
        page = body.decode()
        assert status == 200, path
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' covers scripts
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "<script" not in page and "<img src=x" not in page and "<b onmouseover" not in page, path
        assert 'href="javascript:' not in page and 'src="javascript:' not in page, path
    _, _, body = get(server, "/posts?date_from=2024-03-15&date_to=2024-03-15")
    page = body.decode()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; hostile post" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned = 2&quot;&gt;" in page
    assert JS_LINK not in page  # a javascript: link is not shown as a link
    assert 'href="https://social.example/p/evil-formula" rel="noopener noreferrer nofollow"' in page
    _, _, body = get(server, "/")
    assert "&lt;b onmouseover=alert(4)&gt;evil&lt;/b&gt;" in body.decode()
    _, _, body = get(server, "/spikes?threshold=1")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; hostile post" in body.decode()


def test_csv_export_defuses_spreadsheet_formulas(server):
    """A post text starting with = is exported with a leading apostrophe; other values unchanged."""
    rows = {r["post_id"]: r for r in csv_rows(server, "/csv/posts?date_from=2024-03-15&date_to=2024-03-15")}
    assert rows["evil-formula"]["text"] == "'" + FORMULA_TEXT
    assert rows["evil-script"]["text"] == SCRIPT_TEXT and rows["evil-script"]["author"] == IMG_AUTHOR
    assert rows["evil-brand"]["brand"] == MARKUP_BRAND


def test_thumbnails_come_only_from_the_image_cache(server):
    """Cached images are served re-encoded as small JPEGs; anything else is a 404, never fetched."""
    cached = "https://img.example/acme-0314-09.jpg"
    status, headers, body = get(server, "/thumb?" + urllib.parse.urlencode({"url": cached}))
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    from PIL import Image

    assert max(Image.open(io.BytesIO(body)).size) <= 240
    assert get(server, "/thumb?url=https://img.example/acme-0304-00.jpg")[0] == 404  # scored, not cached
    assert get(server, "/thumb?url=javascript:alert(5)")[0] == 404
    _, _, page = get(server, "/posts?brand=acme&date_from=2024-03-14&date_to=2024-03-14")
    sources = [s.split('"')[0] for s in page.decode().split('<img src="')[1:]]
    assert len(sources) == 10 and all(s.startswith("/thumb?url=https%3A%2F%2Fimg.example%2Facme-0314-") for s in sources)
    # a post whose image the cache lacks says so: it was a broken picture (a 404 in the browser's console)
    _, _, page = get(server, "/posts?brand=acme&date_from=2024-03-04&date_to=2024-03-04")
    imgs = [s.split('"')[0] for s in page.decode().split('<img src="')[1:]]  # the one it holds: the opposite image's
    assert imgs == ["/thumb?url=https%3A%2F%2Fimg.example%2Facme-0304-03.jpg"]
    assert "no image: not in the image cache</div>" in page.decode()
    assert get(server, "/favicon.ico")[0] == 204  # every first visit asks: no 404 in the console either


def test_the_spikes_definition_and_the_posts_form_follow_their_settings(server):
    """The definition said "7 days of history" whatever the window (3 needs 3), and the posts page's Apply dropped
    its documented `limit`."""
    _, _, body = get(server, "/spikes?window=3&threshold=2")
    assert "a day needs 3 days of history" in body.decode()
    _, _, body = get(server, "/posts?brand=acme&limit=200")
    assert '<input type="hidden" name="limit" value="200">' in body.decode()


def test_the_filter_form_submits_what_the_server_takes_and_shows_what_the_page_shows(server):
    """A shared link's threshold 2.7 or a range wider than the data made the browser refuse every Apply (step 0.5,
    the dates' min/max); a brand with no posts showed as "all", and Apply dropped it; Back restored the form's
    last edit over the page's filters (autocomplete)."""
    page = get(server, "/spikes?threshold=2.7&brand=umbrella&date_from=2000-01-01")[2].decode()
    assert 'name="threshold" step="any"' in page and 'class="filters" autocomplete="off"' in page
    assert 'name="date_from" value="2000-01-01">' in page  # no min or max to refuse it
    assert '<option value="umbrella" selected>umbrella (0)</option>' in page
    gallery = get(server, "/disagreement?limit=1&label=positive")[2].decode()
    assert "Gallery: opposite posts, most engaging first (1 shown, at most 1; positive toward the brand)" in gallery


def test_binds_loopback_by_default_and_refuses_other_host_names(server):
    """127.0.0.1 unless --host says otherwise; a request naming another host (DNS rebinding) is refused."""
    assert build_parser().parse_args(["dashboard", "--db", "x"]).host == "127.0.0.1"
    assert server.server_address[0] == "127.0.0.1"
    assert get(server, "/", {"Host": "attacker.example:%d" % server.server_address[1]})[0] == 403
    assert get(server, "/", {"Host": "localhost:%d" % server.server_address[1]})[0] == 200


def test_refuses_the_pipeline_database_and_bad_filters(planted, server):
    """The pipeline's own file is refused (a reader there would stop the next run); bad input is a 400."""
    snapshot, _ = planted
    with pytest.raises(ValueError, match="analyst snapshot"):
        Dashboard(snapshot.with_name("planted.duckdb"))
    status, _, body = get(server, "/?date_from=2024-13-01")
    assert status == 400 and b"date_from must be a date" in body
    status, _, body = get(server, "/?date_from=2024-03-20&date_to=2024-03-01")  # none would pass for no data
    assert status == 400 and b"date_from 2024-03-20 is after date_to 2024-03-01" in body
    assert b"<a href='/'>Overview</a>" in body  # a way back from the error page, not a dead end
    status, _, body = get(server, "/%5Cevil.example/?period=x")  # "/\" reads as "//" in a browser: no link to it
    assert status == 400 and b"evil.example" not in body
    assert get(server, "/?period=month")[0] == 400
    assert get(server, "/csv/nope")[0] == 404


def test_a_newly_published_snapshot_is_read_at_the_next_page(tmp_path):
    """The pipeline replaces the snapshot file; the running dashboard shows the new rows without a restart."""
    db = reportdata.build(tmp_path / "p.duckdb")
    snapshot = publish.publish_snapshot(db)
    srv = DashboardServer(Dashboard(snapshot), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        before = {r["brand"]: r["posts"] for r in csv_rows(srv, "/csv/brands")}
        with store.connect(db) as con:
            con.execute("INSERT INTO scored_posts SELECT * REPLACE ('acme-new' AS post_id) FROM scored_posts "
                        "WHERE post_id = 'acme-0304-00' AND model_version = 'v2'")
        publish.publish_snapshot(db)
        after = {r["brand"]: r["posts"] for r in csv_rows(srv, "/csv/brands")}
    finally:
        srv.shutdown()
        srv.server_close()
    assert (before["acme"], after["acme"]) == ("76", "77")


def test_mmsa_dashboard_command_serves_the_snapshot(planted):
    """`mmsa dashboard --db SNAPSHOT --port 0` in its own process: it says where it listens and serves there."""
    snapshot, cache = planted
    proc = subprocess.Popen([sys.executable, "-m", "mmsa.cli", "dashboard", "--db", str(snapshot), "--port", "0",
                             "--cache", str(cache)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "mmsa dashboard on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "spikes", timeout=30) as r:
            assert r.status == 200 and b"acme-0314-09" in r.read()
        assert "Only this machine can open it" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_thumbnails_are_served_without_importing_torch(planted):
    """The dashboard reads the image cache (mmsa.images.cache) without the fetching code, and so without torch,
    whose import alone costs over a second of the dashboard's start."""
    snapshot, cache = planted
    code = ("import sys\nfrom mmsa.dashboard.server import Dashboard\n"
            f"app = Dashboard({str(snapshot)!r}, {str(cache)!r})\n"
            "response = app.handle('/thumb', {'url': ['https://img.example/acme-0314-09.jpg']})\n"
            "print(response.status, response.content_type, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["200", "image/jpeg", "False"], out.stdout + out.stderr


# --- in a real browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
        pg = context.new_page()
        pg.hosts = set()  # every host the page asked for anything: only the dashboard's
        pg.on("request", lambda request: pg.hosts.add(urllib.parse.urlsplit(request.url).netloc))
        pg.errors = []
        pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
        yield pg
        browser.close()


def test_browser_overview_brand_filter_then_the_spike_day_and_its_posts(server, page):
    """Load the overview, pick a brand in the filter, open Spikes, click the spike day, read its driving posts."""
    page.goto(server.url)
    assert page.locator("svg.trend").count() == 3  # acme, globex, the markup-named brand
    page.select_option("select[name=brand]", "globex")
    page.click("button[type=submit]")
    assert "brand=globex" in page.url
    assert [page.locator("svg.trend").nth(i).get_attribute("data-brand") for i in range(page.locator("svg.trend").count())] == ["globex"]
    assert page.locator("#table-brands tbody tr").count() == 1
    assert page.locator("svg.estimates rect").count() == 3  # globex's three estimated shares
    assert "net" in page.locator("svg.estimates").text_content()

    page.select_option("select[name=brand]", "acme")
    page.click("button[type=submit]")
    page.click("nav >> text=Spikes")
    assert "brand=acme" in page.url
    spike = page.locator("a.spike-day")
    assert spike.count() == 1 and spike.inner_text() == "2024-03-14"
    assert "z = 4.74" in page.locator("article.spike").inner_text()
    spike.click()
    assert "/posts?" in page.url and "date_from=2024-03-14" in page.url
    posts = page.locator("article.post")
    assert posts.count() == 10
    assert [posts.nth(i).get_attribute("data-post-id") for i in range(3)] == ["acme-0314-09", "acme-0314-08", "acme-0314-07"]
    first = posts.first.inner_text()
    assert "negative post 9 about acme" in first and "engagement 801" in first
    # The thumbnails came from the dashboard (its image cache) and decoded in the browser.
    page.wait_for_function("() => [...document.querySelectorAll('article.post img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("article.post img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 10 and all(0 < w <= 240 for w in widths)

    # A bar of the overview chart leads to the same posts.
    page.goto(server.url + "?brand=acme&period=day")
    page.click('svg.trend a[data-period="2024-03-14"]')
    assert page.locator("article.post").count() == 10
    assert page.hosts == {f"127.0.0.1:{server.server_address[1]}"}  # nothing fetched from anywhere else
    assert page.errors == []


def test_browser_hostile_post_renders_as_text(server, page):
    """The <script> / <img onerror> post shows its markup as text; nothing of it runs or becomes an element."""
    page.goto(server.url + "posts?date_from=2024-03-15&date_to=2024-03-15")
    card = page.locator('article.post[data-post-id="evil-script"]')
    assert card.locator("p.text").inner_text() == SCRIPT_TEXT
    assert card.locator(".author").inner_text() == IMG_AUTHOR
    assert page.locator("script").count() == 0
    assert page.locator("main img:not([src^='/thumb'])").count() == 0
    assert card.locator("a").count() == 0  # its javascript: link is not a link
    assert page.evaluate("typeof window.__pwned") == "undefined"
    page.goto(server.url)
    assert MARKUP_BRAND in page.locator("svg.trend .panel-title").all_text_contents()
    assert page.locator("b").count() == 0 and page.evaluate("typeof window.__pwned") == "undefined"


def test_browser_every_view_renders_and_exports_its_table_as_csv(server, page):
    """Each view opens from the navigation with its heading and tables; a CSV link downloads that table."""
    page.goto(server.url)
    for name, heading in [("Share of voice", "Share of voice"), ("Text vs image", "Text vs image"),
                          ("Data quality", "Data quality"), ("Overview", "Brand overview")]:
        page.click(f"nav >> text={name}")
        assert page.locator("h2").first.inner_text() == heading
        assert page.locator("a.csv").count() >= 1
    page.click("nav >> text=Data quality")
    assert page.locator("section.table").count() == 5  # images, posts not scored, rejected rows, runs, models
    with page.expect_download() as download:
        page.click("#table-runs a.csv")
    text = Path(download.value.path()).read_text()
    assert text.splitlines()[0].startswith("run_id,dump,model_version") and len(text.splitlines()) == 4
    assert page.errors == []
