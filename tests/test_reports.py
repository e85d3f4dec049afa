"""The SQL report pack: exact numbers on a planted database (tests/reportdata.py), bound
parameters, output formats, the CLI, charts, the HTML summary, the headline and the analyst
snapshot."""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest
import reportdata
from reportdata import MOST_NEGATIVE, MOST_POSITIVE, NO_ENGAGEMENT, OPPOSITE_ACME, SARCASM_TOP, SPIKE_DAY

from mmsa import charts, publish, report, store
from mmsa.dashboard.filters import Filters
from mmsa.dashboard.queries import run_query
from mmsa.schema import LABELS
from mmsa.cli import main

WEEK2 = {"date_from": "2024-03-11", "date_to": "2024-03-17"}
DAYS_FROM_0311 = reportdata.DAYS[7:]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return reportdata.build(tmp_path_factory.mktemp("reports") / "planted.duckdb")


def rows(name: str, db: Path, **params) -> list[dict]:
    return report.run_report(name, db, **params).to_pylist()


def by(rows_: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows_}


# --- the pack itself -------------------------------------------------------------------------


def test_every_report_documents_what_it_answers_and_takes_the_common_filters():
    """Analysts read the header to pick a report; every report must filter by brand and dates."""
    names = [name for name, _ in report.list_reports()]
    assert len(names) == 16
    for name in names:
        header = report.describe(name)
        assert header.startswith(f"{name}: "), name
        assert "Answers:" in header, name
        params = report.parameters(name)
        assert set(report.FILTERS) <= set(params), name
        for param in params:
            assert f"${param}" in header, f"{name} does not document ${param}"


def test_filter_values_are_bound_not_pasted_into_sql(db):
    """A brand containing SQL is just a brand that matches nothing, not code."""
    assert rows("daily_brand_sentiment", db, brand="acme' OR '1'='1") == []
    assert rows("rejected_rows", db, brand="x') OR true --") == []


def test_a_misspelt_parameter_is_an_error_not_a_silent_no_filter(db):
    """--param windw=3 must not quietly fall back to the default window."""
    with pytest.raises(ValueError, match="no parameter windw"):
        report.run_report("sentiment_spikes", db, windw=3)
    with pytest.raises(ValueError, match="unknown report"):
        report.run_report("no_such_report", db)
    with pytest.raises(ValueError, match="bad parameter value"):
        report.run_report("daily_brand_sentiment", db, date_from="2024-13-01")


def test_a_db_that_is_not_the_pipelines_is_one_line_saying_so(tmp_path, capsys):
    """--db given the dump, a file that is not DuckDB, or a DuckDB database of something else: each is told as not
    mmsa's database (exit 2), not as a lock another process holds, and not as a traceback."""
    (tmp_path / "posts.jsonl").write_text('{"post_id": "a"}\n')
    (tmp_path / "bogus.duckdb").write_text("hello\n")
    duckdb.connect(str(tmp_path / "other.duckdb")).execute("CREATE TABLE t (x INT)").close()
    for name, why in (("posts.jsonl", "not a DuckDB file"), ("bogus.duckdb", "not a DuckDB file"),
                      ("other.duckdb", "a DuckDB database without mmsa's tables")):
        assert main(["report", "runs", "--db", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == (f"mmsa report: error: {tmp_path / name} is not a database mmsa score wrote: "
                                           f"give the --db of the scoring runs ({why})\n")


def test_a_database_written_before_a_runs_column_existed_is_read_with_it_null(tmp_path):
    """A read-only reader cannot add the columns a newer `runs` has (store.RUNS_ADDED): the reports see them as NULL
    and the runs report counts such a run's unscored posts by those still stored."""
    db = reportdata.build(tmp_path / "old.duckdb")
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE runs DROP COLUMN posts_unscored")
    runs = by(rows("runs", db), "run_id")
    assert (runs["run-1"]["posts_scored"], runs["run-1"]["posts_unscored"]) == (48, 0)
    assert "posts in" in report.headline_markdown(db).markdown


# --- trend reports ---------------------------------------------------------------------------


def test_daily_brand_sentiment_counts_shares_net_and_mean_score(db):
    """Per brand and day: counts, shares, net sentiment and mean score of the planted days."""
    daily = by(rows("daily_brand_sentiment", db), "brand", "day")
    assert len(daily) == 28
    normal = daily[("acme", date(2024, 3, 4))]
    assert (normal["posts"], normal["positive"], normal["neutral"], normal["negative"]) == (4, 2, 1, 1)
    assert normal["positive_share"] == 0.5 and normal["neutral_share"] == 0.25 and normal["negative_share"] == 0.25
    assert normal["net_sentiment"] == pytest.approx(1 / 3)
    assert normal["mean_sentiment_score"] == pytest.approx((2 * 0.75 - 0.75) / 4)
    spike = daily[("acme", SPIKE_DAY)]
    assert (spike["posts"], spike["positive"], spike["neutral"], spike["negative"]) == (10, 1, 1, 8)
    assert spike["negative_share"] == 0.8
    assert spike["net_sentiment"] == pytest.approx(-7 / 9)
    assert spike["mean_sentiment_score"] == pytest.approx((0.75 - 7 * 0.75 - 0.96) / 10)
    flat = daily[("globex", date(2024, 3, 5))]
    assert (flat["posts"], flat["neutral"], flat["net_sentiment"]) == (2, 0, 0.0)


def test_daily_filters_by_brand_and_inclusive_dates(db):
    """brand/from/to narrow the rows; NULL means no filter."""
    got = rows("daily_brand_sentiment", db, brand="globex", date_from="2024-03-10", date_to="2024-03-12")
    assert [(r["brand"], r["day"], r["posts"]) for r in got] == [
        ("globex", date(2024, 3, 10), 2), ("globex", date(2024, 3, 11), 3), ("globex", date(2024, 3, 12), 3)]
    assert len(rows("daily_brand_sentiment", db, brand=None, date_from=None)) == 28


def test_reports_read_one_model_version_the_latest_unless_pinned(db):
    """Stale v1 rows of the same posts are never added to v2's; model_version=v1 reads only them."""
    weekly = by(rows("weekly_brand_sentiment", db), "brand", "week")
    assert weekly[("globex", date(2024, 3, 4))]["posts"] == 14  # not 28
    assert weekly[("globex", date(2024, 3, 4))]["neutral"] == 0
    old = rows("weekly_brand_sentiment", db, model_version="v1")
    assert [(r["brand"], r["week"], r["posts"], r["neutral"]) for r in old] == [("globex", date(2024, 3, 4), 14, 14)]
    versions = by(rows("model_versions", db), "model_version")
    assert (versions["v2"]["is_default"], versions["v2"]["posts"], versions["v2"]["runs"]) == (True, 111, 2)
    assert (versions["v1"]["is_default"], versions["v1"]["posts"], versions["v1"]["last_day"]) == (False, 14, date(2024, 3, 10))


def test_the_latest_model_rule_lives_in_one_view(db):
    """"The latest model's rows" is the store's view latest_model_version, which every report that defaults to it
    reads; no report repeats the rule (arg_max of scored_at), so changing it is one edit."""
    texts = {p.stem: p.read_text() for p in report.REPORTS_DIR.glob("*.sql")}
    assert [name for name, text in texts.items() if "arg_max(model_version" in text] == []
    readers = sorted(name for name, text in texts.items() if "latest_model_version" in text)
    assert len(readers) >= 12 and {"daily_brand_sentiment", "brand_prevalence", "model_versions"} <= set(readers)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT model_version FROM latest_model_version").fetchall() == [("v2",)]


def test_weekly_brand_sentiment_per_iso_week(db):
    """Weeks start on Monday; the planted weekly totals come back exactly."""
    weekly = by(rows("weekly_brand_sentiment", db), "brand", "week")
    w1, w2 = weekly[("acme", date(2024, 3, 4))], weekly[("acme", date(2024, 3, 11))]
    assert (w1["days_with_posts"], w1["posts"], w1["positive"], w1["neutral"], w1["negative"]) == (7, 34, 17, 10, 7)
    assert (w2["posts"], w2["positive"], w2["neutral"], w2["negative"]) == (42, 17, 11, 14)
    assert w1["net_sentiment"] == pytest.approx(10 / 24)
    assert w2["net_sentiment"] == pytest.approx(3 / 31)
    assert weekly[("globex", date(2024, 3, 11))]["positive_share"] == pytest.approx(2 / 3)


def test_share_of_voice_over_all_days_and_over_one_week(db):
    """Mentions and positive mentions split between brands; a brand filter keeps shares of the whole."""
    full = by(rows("share_of_voice", db), "brand")
    assert (full["acme"]["mentions"], full["globex"]["mentions"]) == (76, 35)
    assert full["acme"]["share_of_voice"] == pytest.approx(76 / 111)
    assert (full["acme"]["positive_mentions"], full["globex"]["positive_mentions"]) == (34, 21)
    assert full["globex"]["positive_share_of_voice"] == pytest.approx(21 / 55)
    assert full["acme"]["negative_share_of_voice"] == pytest.approx(21 / 35)
    week2 = rows("share_of_voice", db, **WEEK2)
    assert [(r["brand"], r["mentions"]) for r in week2] == [("acme", 42), ("globex", 21)]
    assert [r["share_of_voice"] for r in week2] == pytest.approx([2 / 3, 1 / 3])
    only = rows("share_of_voice", db, brand="globex", **WEEK2)
    assert [(r["brand"], r["share_of_voice"]) for r in only] == [("globex", pytest.approx(1 / 3))]


def test_period_over_period_defaults_to_the_last_7_days_against_the_7_before(db):
    """This week (03-11..17) against last (03-04..10), per brand."""
    pop = by(rows("period_over_period", db), "brand")
    acme = pop["acme"]
    assert (acme["period_from"], acme["period_to"], acme["previous_from"], acme["previous_to"]) == (
        date(2024, 3, 11), date(2024, 3, 17), date(2024, 3, 4), date(2024, 3, 10))
    assert (acme["posts"], acme["previous_posts"], acme["posts_change"]) == (42, 34, 8)
    assert acme["posts_change_pct"] == pytest.approx(8 / 34)
    assert acme["net_sentiment_change"] == pytest.approx(3 / 31 - 10 / 24)
    assert acme["negative_share_change"] == pytest.approx(14 / 42 - 7 / 34)
    assert (pop["globex"]["previous_net_sentiment"], pop["globex"]["net_sentiment"]) == (0.0, pytest.approx(1 / 3))


def test_period_over_period_with_an_explicit_period(db):
    """from/to set the current period; the previous one is as long, just before it."""
    pop = by(rows("period_over_period", db, brand="acme", date_from="2024-03-13", date_to="2024-03-15"), "brand")
    acme = pop["acme"]
    assert list(pop) == ["acme"]
    assert (acme["previous_from"], acme["previous_to"]) == (date(2024, 3, 10), date(2024, 3, 12))
    assert (acme["posts"], acme["previous_posts"]) == (6 + 10 + 6, 4 + 6 + 4)


# --- spikes ----------------------------------------------------------------------------------


def test_spikes_find_only_the_planted_day_with_its_z_scores_and_driving_posts(db):
    """The acme spike day is the only anomaly; z-scores match its 10 days of history (the
    default 28-day window is cut by the start of the data)."""
    got = rows("sentiment_spikes", db)
    assert {(r["brand"], r["day"]) for r in got} == {("acme", SPIKE_DAY)}
    volume_window = [4, 6] * 5  # 03-04 .. 03-13
    share_window = [1 / 4, 1 / 6] * 5
    first = got[0]
    assert first["kind"] == "volume+negative_share"
    assert first["history_days"] == 10
    assert first["mean_posts"] == pytest.approx(statistics.mean(volume_window))
    assert first["posts_z"] == pytest.approx((10 - statistics.mean(volume_window)) / statistics.stdev(volume_window))
    assert first["negative_share_z"] == pytest.approx((0.8 - statistics.mean(share_window)) / statistics.stdev(share_window))
    assert [(r["rank"], r["post_id"], r["engagement"]) for r in got] == [
        (1, "acme-0314-09", 801), (2, "acme-0314-08", 701), (3, "acme-0314-07", 601)]


def test_spike_drivers_are_the_posts_of_its_utc_day_whatever_the_connection_time_zone(db):
    """An analyst's own connection in another time zone gets the same driving posts as the CLI (UTC days)."""
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'Pacific/Kiritimati'")  # UTC+14: most of a UTC day is the next local day
        local = report.run_report("sentiment_spikes", con).to_pylist()
    assert [(r["day"], r["post_id"]) for r in local] == [(r["day"], r["post_id"]) for r in rows("sentiment_spikes", db)]


def test_spike_parameters_threshold_window_top_and_dates(db):
    """threshold, window, top and the date filters change what is flagged and listed."""
    strict = rows("sentiment_spikes", db, threshold=5, top=1)
    assert [(r["kind"], r["post_id"]) for r in strict] == [("negative_share", "acme-0314-09")]
    assert rows("sentiment_spikes", db, threshold=20) == []
    for silent in ("nan", "inf", "high"):  # each found no spike, as if there were none
        with pytest.raises(ValueError, match="threshold must be a z-score"):
            rows("sentiment_spikes", db, threshold=silent)
    assert rows("sentiment_spikes", db, date_from="2024-03-15") == []
    # Days with less than 7 days of history are not judged: with a threshold every judged day
    # passes, the first is 03-11.
    everything = rows("sentiment_spikes", db, brand="acme", threshold=-100, top=1)
    assert [r["day"] for r in everything] == DAYS_FROM_0311
    # A 3-day window (judged with 3 days of history): 03-11..13 = [6, 4, 6], z = 4.04.
    short = rows("sentiment_spikes", db, window=3, top=1)
    assert short[0]["posts_z"] == pytest.approx((10 - 16 / 3) / statistics.stdev([6, 4, 6]))
    # min_posts above the day's 10 posts silences the negative-share spike.
    assert {r["kind"] for r in rows("sentiment_spikes", db, min_posts=11)} == {"volume"}
    # source / lang judge that platform's or language's own series: acme's twitter posts have no spike
    # (the spike day's posts are all on reddit, where acme has no history to judge it on).
    assert rows("sentiment_spikes", db, source="twitter") == []
    assert rows("sentiment_spikes", db, source="reddit") == []
    assert {r["day"] for r in rows("sentiment_spikes", db, lang="en")} == {SPIKE_DAY}


def test_source_and_language_filters_of_the_disagreement_and_image_reports(db):
    """The dashboard's source and language filters reach the reports it reuses."""
    german = by(rows("modality_disagreement", db, lang="de"), "brand")
    assert list(german) == ["globex"] and (german["globex"]["posts"], german["globex"]["disagreeing"]) == (14, 0)
    reddit = by(rows("image_status_mix", db, source="reddit"), "brand", "image_status")
    assert {k: r["posts"] for k, r in reddit.items()} == {("acme", "ok"): 10}


# --- breakdowns and posts ------------------------------------------------------------------


def test_breakdowns_by_source_and_language(db):
    """Per brand and source / language: counts, share of the brand and sentiment."""
    source = by(rows("breakdown_by_source", db), "brand", "source")
    assert set(source) == {("acme", "twitter"), ("acme", "reddit"), ("globex", "instagram")}
    reddit = source[("acme", "reddit")]
    assert (reddit["posts"], reddit["positive"], reddit["neutral"], reddit["negative"]) == (10, 1, 1, 8)
    assert reddit["share_of_brand_posts"] == pytest.approx(10 / 76)
    assert (source[("acme", "twitter")]["posts"], source[("acme", "twitter")]["negative"]) == (66, 13)
    lang = by(rows("breakdown_by_language", db), "brand", "lang")
    assert {k: r["posts"] for k, r in lang.items()} == {("acme", "en"): 76, ("globex", "de"): 14, ("globex", "en"): 21}
    assert lang[("globex", "de")]["net_sentiment"] == 0.0
    assert lang[("globex", "en")]["share_of_brand_posts"] == pytest.approx(0.6)


def test_top_posts_by_engagement_most_positive_and_most_negative(db):
    """Each brand's top posts per ranking; missing engagement counts are 0."""
    top = by(rows("top_posts", db, limit=2), "brand", "ranking", "rank")
    assert len(top) == 2 * 3 * 2
    assert top[("acme", "engagement", 1)]["post_id"] == "acme-0314-09"
    assert top[("acme", "most_positive", 1)]["post_id"] == MOST_POSITIVE
    assert top[("acme", "most_negative", 1)]["post_id"] == MOST_NEGATIVE
    assert top[("acme", "most_negative", 1)]["brand_sentiment_score"] == pytest.approx(-0.96)
    assert top[("globex", "engagement", 1)]["post_id"] == SARCASM_TOP
    assert top[("globex", "engagement", 1)]["engagement"] == 501
    # Ties on score go to the most engaging: 03-14-09 (801) is the top -0.75 post.
    assert top[("acme", "most_negative", 2)]["post_id"] == "acme-0314-09"
    week1 = rows("top_posts", db, brand="acme", date_to="2024-03-10", limit=100)
    no_engagement = [r for r in week1 if r["post_id"] == NO_ENGAGEMENT and r["ranking"] == "engagement"]
    assert no_engagement[0]["engagement"] == 0 and no_engagement[0]["rank"] == 34


def test_modality_disagreement_rates_per_brand(db):
    """Planted: acme 2 of 56 disagree (1 opposite), globex 7 of 35 (all positive text + negative image)."""
    rates = by(rows("modality_disagreement", db), "brand")
    acme, globex = rates["acme"], rates["globex"]
    assert (acme["posts"], acme["posts_with_both"], acme["disagreeing"]) == (76, 56, 2)
    assert (acme["positive_text_negative_image"], acme["negative_text_positive_image"]) == (0, 1)
    assert acme["disagreement_rate"] == pytest.approx(2 / 56)
    assert acme["opposite_rate"] == pytest.approx(1 / 56)
    assert (globex["posts_with_both"], globex["disagreeing"], globex["positive_text_negative_image"]) == (35, 7, 7)
    assert globex["opposite_rate"] == pytest.approx(0.2)
    week1 = by(rows("modality_disagreement", db, date_to="2024-03-10"), "brand")
    assert week1["globex"]["disagreeing"] == 0


def test_disagreeing_posts_lists_the_opposite_ones_most_engaging_first(db):
    """The 8 opposite posts; the sarcastic globex post with 501 engagement leads."""
    got = rows("disagreeing_posts", db)
    assert len(got) == 8
    assert got[0]["post_id"] == SARCASM_TOP
    assert (got[0]["text_label"], got[0]["image_label"], got[0]["fused_label"]) == ("positive", "negative", "positive")
    assert (got[0]["text_score"], got[0]["image_score"]) == (pytest.approx(0.75), pytest.approx(-0.75))
    assert OPPOSITE_ACME in {r["post_id"] for r in got}
    assert [r["post_id"] for r in rows("disagreeing_posts", db, brand="acme")] == [OPPOSITE_ACME]
    assert len(rows("disagreeing_posts", db, limit=3)) == 3


# --- data quality --------------------------------------------------------------------------


def test_image_status_mix(db):
    """Per brand: ok / no_image / fetch_error counts and shares."""
    mix = by(rows("image_status_mix", db), "brand", "image_status")
    assert {k: r["posts"] for k, r in mix.items()} == {
        ("acme", "ok"): 56, ("acme", "no_image"): 18, ("acme", "fetch_error"): 2, ("globex", "ok"): 35}
    assert mix[("acme", "fetch_error")]["share_of_brand_posts"] == pytest.approx(2 / 76)
    assert mix[("acme", "fetch_error")]["with_image_label"] == 0
    assert mix[("acme", "ok")]["with_image_label"] == 56
    assert {k: r["images"] for k, r in mix.items()} == {  # one image per post here; no_image posts have none
        ("acme", "ok"): 56, ("acme", "no_image"): 0, ("acme", "fetch_error"): 2, ("globex", "ok"): 35}


def test_a_post_of_two_brands_counts_once_for_each_and_its_images_once_each(tmp_path):
    """A post tagged acme and globex, with three images (two usable, one 404): every report counts it once per
    brand, never twice within one; share of voice keeps both brands; the image report counts 3 images, 1 post."""
    db = reportdata.build(tmp_path / "two.duckdb")
    before = {name: rows(name, db, **WEEK2) for name in ("share_of_voice", "daily_brand_sentiment", "image_status_mix")}
    image = "{position: %d, image_url: 'https://img.example/both-%d.jpg', image_status: '%s', image_label: NULL, " \
            "image_p_positive: NULL, image_p_neutral: NULL, image_p_negative: NULL}"
    images = "[" + ", ".join(image % (k, k, st) for k, st in enumerate(("ok", "http_404", "ok"))) + "]"
    with store.connect(db) as con:
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('both-1' AS post_id, ['acme', 'globex'] AS brands, "
                    f"{images} AS images, 'ok' AS image_status) "
                    "FROM scored_posts WHERE post_id = 'acme-0317-00' AND model_version = 'v2'")
        assert con.sql("SELECT count(*) FROM post_images WHERE post_id = 'both-1'").fetchall() == [(3,)]
    sov = by(rows("share_of_voice", db, **WEEK2), "brand")
    old = by(before["share_of_voice"], "brand")
    assert {b: sov[b]["mentions"] - old[b]["mentions"] for b in ("acme", "globex")} == {"acme": 1, "globex": 1}
    assert sum(r["share_of_voice"] for r in sov.values()) == pytest.approx(1.0)
    daily = by(rows("daily_brand_sentiment", db, **WEEK2), "brand", "day")
    old_daily = by(before["daily_brand_sentiment"], "brand", "day")
    day = date(2024, 3, 17)
    assert [daily[(b, day)]["posts"] - old_daily[(b, day)]["posts"] for b in ("acme", "globex")] == [1, 1]
    mix = by(rows("image_status_mix", db, **WEEK2), "brand", "image_status")
    old_mix = by(before["image_status_mix"], "brand", "image_status")
    for brand in ("acme", "globex"):
        assert mix[(brand, "ok")]["posts"] - old_mix[(brand, "ok")]["posts"] == 1
        assert mix[(brand, "ok")]["images"] - old_mix[(brand, "ok")]["images"] == 2
        assert mix[(brand, "http_404")]["images"] == 1 and mix[(brand, "http_404")]["posts"] == 0
    assert by(rows("model_versions", db), "model_version")["v2"]["posts"] == 76 + 35 + 1


def test_untagged_posts_are_counted_but_in_no_brands_share_of_voice(tmp_path):
    """A post that names no brand is no brand's voice: its row counts it, and the brands' shares (here and on the
    dashboard's voice page) still sum to 1; they had it in their denominator."""
    db = reportdata.build(tmp_path / "untagged.duckdb")
    with store.connect(db) as con:
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('none-' || post_id AS post_id, [] AS brands, "
                    "[] AS brand_scores) FROM scored_posts WHERE model_version = 'v2' AND created_at >= DATE '2024-03-11' "
                    "AND brands = ['globex']")
    sov = by(rows("share_of_voice", db, **WEEK2), "brand")
    assert (sov[None]["mentions"], sov[None]["share_of_voice"], sov[None]["negative_share_of_voice"]) == (21, None, None)
    assert [sov[b]["share_of_voice"] for b in ("acme", "globex")] == pytest.approx([2 / 3, 1 / 3])
    assert sum(sov[b]["positive_share_of_voice"] for b in ("acme", "globex")) == pytest.approx(1.0)
    with duckdb.connect(str(db), read_only=True) as con:
        trend = run_query(con, "share_of_voice_trend", Filters(date_from="2024-03-11", date_to="2024-03-17"),
                          "v2", period="week")
    assert [(r["brand"], r["mentions"], r["all_mentions"]) for r in trend] == [("acme", 42, 63), ("globex", 21, 63)]


def test_every_brand_view_reads_the_sentiment_toward_the_brand_not_the_posts(tmp_path):
    """A negative post that praises acme (brand_scores: acme positive, globex negative) counts as positive for acme
    in the breakdowns, share of voice and the posts behind a bar, tops acme's most positive posts and, though the
    most engaging post of acme's spike day, does not lead its negative spike's driving posts."""
    db = reportdata.build(tmp_path / "split.duckdb")
    day = {"date_from": SPIKE_DAY.isoformat(), "date_to": SPIKE_DAY.isoformat()}
    before = {name: rows(name, db, **day) for name in ("breakdown_by_source", "breakdown_by_language")}
    with duckdb.connect(str(db), read_only=True) as con:
        voice_before = by(run_query(con, "share_of_voice_trend", Filters(**day), "v2", period="day"), "brand")
    scores = "[{brand: 'acme', brand_label: 'positive', brand_p_positive: 0.98, brand_p_neutral: 0.01, " \
             "brand_p_negative: 0.01}, {brand: 'globex', brand_label: 'negative', brand_p_positive: 0.005, " \
             "brand_p_neutral: 0.005, brand_p_negative: 0.99}]"
    with store.connect(db) as con:
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('split-1' AS post_id, ['acme', 'globex'] AS brands, "
                    f"{scores} AS brand_scores, 'negative' AS label, 0.01 AS p_positive, 0.02 AS p_neutral, "
                    "0.97 AS p_negative, -0.96 AS sentiment_score, 100000 AS likes) "
                    "FROM scored_posts WHERE post_id = 'acme-0314-00' AND model_version = 'v2'")
    for name, key in (("breakdown_by_source", "source"), ("breakdown_by_language", "lang")):
        got, old = by(rows(name, db, **day), "brand", key), by(before[name], "brand", key)
        for brand, label in (("acme", "positive"), ("globex", "negative")):
            (k,) = [k for k in got if k[0] == brand and got[k]["posts"] != old.get(k, {"posts": 0})["posts"]]
            assert {lab: got[k][lab] - old.get(k, {lab: 0})[lab] for lab in LABELS} == {
                lab: int(lab == label) for lab in LABELS}, (name, brand)
    top = by(rows("top_posts", db, **day, limit=1), "brand", "ranking", "rank")
    assert (top[("acme", "most_positive", 1)]["post_id"], top[("acme", "most_positive", 1)]["brand_label"]) == (
        "split-1", "positive")
    assert top[("acme", "most_positive", 1)]["brand_sentiment_score"] == pytest.approx(0.97)
    assert top[("globex", "most_negative", 1)]["post_id"] == "split-1"
    with duckdb.connect(str(db), read_only=True) as con:
        voice = by(run_query(con, "share_of_voice_trend", Filters(**day), "v2", period="day"), "brand")
        acme_negative = run_query(con, "posts", Filters(brand="acme", **day), "v2", label="negative", limit=100)
        acme_positive = run_query(con, "posts", Filters(brand="acme", **day), "v2", label="positive", limit=100)
    assert voice["acme"]["positive_mentions"] - voice_before["acme"]["positive_mentions"] == 1
    assert voice["acme"]["negative_mentions"] == voice_before["acme"]["negative_mentions"]
    assert "split-1" in {r["post_id"] for r in acme_positive} - {r["post_id"] for r in acme_negative}
    spike = [r for r in rows("sentiment_spikes", db, brand="acme", top=1) if r["day"] == SPIKE_DAY]
    assert spike[0]["kind"].endswith("negative_share") and spike[0]["post_id"] != "split-1"
    assert spike[0]["brand_label"] == "negative"


def test_rejected_rows_per_run_and_reason_with_brand_from_raw_json(db):
    """Rejections group by run and reason; a brand filter reads JSON raw rows and skips the rest."""
    got = rows("rejected_rows", db)
    assert [(r["run_id"], r["reason"], r["rows"], r["first_line"]) for r in got] == [
        ("run-1", "invalid created_at", 1, 9), ("run-1", "missing post_id", 1, 7), ("run-2", "not JSON", 1, 3)]
    assert [r["reason"] for r in rows("rejected_rows", db, brand="acme")] == ["missing post_id"]
    assert [r["run_id"] for r in rows("rejected_rows", db, model_version="v1")] == []


def test_rejected_rows_brand_filter_ignores_case_and_reads_a_brands_list(tmp_path):
    """A rejected row naming "ACME", " acme ", or acme in a `brands` list (or a `brand` list, a `brands` name: the
    reader takes either) is acme's, as the scored posts' brands are (only an exact `brand` was read)."""
    import pyarrow as pa
    from mmsa.schema import REJECTED_SCHEMA

    raws = ['{"brand": "ACME"}', '{"brands": ["x", "acme"]}', '{"brand": " acme\\t"}', '{"brand": "globex"}', "not json",
            '{"brands": "Acme"}', '{"brand": ["acme"]}']
    db = tmp_path / "rejected.duckdb"
    with store.connect(db) as con:
        con.register("rows", pa.Table.from_pylist([{"reason": f"r{i}", "raw": raw, "dump": "d.jsonl", "line": i + 1,
                                                    "run_id": "run"} for i, raw in enumerate(raws)], schema=REJECTED_SCHEMA))
        con.execute("INSERT INTO rejected_posts SELECT * FROM rows")
    assert sorted(r["reason"] for r in rows("rejected_rows", db, brand="acme")) == ["r0", "r1", "r2", "r5", "r6"]
    assert [r["reason"] for r in rows("rejected_rows", db, brand="Globex")] == ["r3"]


def test_runs_report_posts_scored_per_run_and_model(db):
    """Each run with its model, counts, rejection rate, duration and stored posts."""
    runs = by(rows("runs", db), "run_id")
    assert list(runs) == ["run-0", "run-1", "run-2"]
    r1 = runs["run-1"]
    assert (r1["model_version"], r1["posts_in"], r1["posts_scored"], r1["posts_rejected"], r1["stored_posts"]) == (
        "v2", 50, 48, 2, 48)
    assert r1["rejected_rate"] == pytest.approx(0.04)
    assert r1["seconds"] == 1800
    assert json.loads(r1["image_status"]) == {"ok": 38, "no_image": 8, "fetch_error": 2}
    assert runs["run-0"]["stored_posts"] == 14
    assert by(rows("runs", db, brand="globex"), "run_id")["run-2"]["stored_posts"] == 21
    assert [r["run_id"] for r in rows("runs", db, model_version="v2", date_from="2024-03-18")] == ["run-1", "run-2"]


def test_posts_without_a_brand_are_their_own_group_not_dropped(tmp_path):
    """A post with no brand shows up as a NULL-brand group; joins inside reports keep it."""
    db = reportdata.build(tmp_path / "nobrand.duckdb")
    with store.connect(db) as con:
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('nobrand-1' AS post_id, []::VARCHAR[] AS brands) "
                    "FROM scored_posts WHERE post_id = 'acme-0317-00' AND model_version = 'v2'")
    for name in ("daily_brand_sentiment", "weekly_brand_sentiment", "share_of_voice", "breakdown_by_source",
                 "modality_disagreement", "period_over_period"):
        nobrand = [r for r in rows(name, db) if r["brand"] is None]
        assert [r.get("posts", r.get("mentions")) for r in nobrand] == [1], name
    assert by(rows("period_over_period", db), "brand")[None]["previous_posts"] == 0
    top = [r for r in rows("top_posts", db) if r["brand"] is None]
    assert [(r["ranking"], r["post_id"]) for r in top] == [
        ("engagement", "nobrand-1"), ("most_negative", "nobrand-1"), ("most_positive", "nobrand-1")]


# --- formats and CLI -----------------------------------------------------------------------


def test_csv_json_and_table_formats_carry_the_same_numbers(db):
    """CSV keeps full precision, JSON writes ISO dates, the table rounds to 4 decimals."""
    table = report.run_report("share_of_voice", db, **WEEK2)
    parsed = list(csv.DictReader(io.StringIO(report.format_result(table, "csv"))))
    assert parsed[0]["brand"] == "acme" and float(parsed[0]["share_of_voice"]) == 2 / 3
    assert json.loads(report.format_result(table, "json"))[1]["mentions"] == 21
    text = report.format_result(table, "table")
    assert text.splitlines()[0].split()[:3] == ["brand", "mentions", "share_of_voice"]
    assert "0.6667" in text
    daily = json.loads(report.format_json(report.run_report("daily_brand_sentiment", db, brand="acme", date_to="2024-03-04")))
    assert daily == [{**daily[0], "day": "2024-03-04", "posts": 4}]
    with pytest.raises(ValueError, match="unknown format"):
        report.format_result(table, "xml")


def test_cli_report_with_filters_params_format_and_chart(db, tmp_path, capsys):
    """`mmsa report NAME --db --brand --from --to --param --format --chart` end to end."""
    chart = tmp_path / "spikes.png"
    assert main(["report", "sentiment_spikes", "--db", str(db), "--brand", "acme", "--from", "2024-03-11",
                 "--param", "threshold=5", "--param", "top=2", "--format", "csv", "--chart", str(chart)]) == 0
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["day"], r["kind"], r["post_id"]) for r in out] == [
        ("2024-03-14", "negative_share", "acme-0314-09"), ("2024-03-14", "negative_share", "acme-0314-08")]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", "--list"]) == 0
    assert "share_of_voice" in capsys.readouterr().out
    assert main(["report", "top_posts", "--db", str(db), "--param", "limt=3"]) == 2
    assert "no parameter limt" in capsys.readouterr().err
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--brand", "ACME"]) == 0
    assert "no post has brand 'ACME'; did you mean 'acme'? (brands here, matched exactly: acme, globex)" in \
        capsys.readouterr().err
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--brand", "acme", "--to", "2000-01-01"]) == 0
    assert capsys.readouterr().err == ""  # a known brand with no posts in the range: nothing to hint
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--param", "model_version=v9"]) == 0
    assert "no post was scored by model 'v9' (models here: v1, v2)" in capsys.readouterr().err  # was an empty table alone
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--brand", "acme", "--param", "brand=globex"]) == 2
    assert "brand given twice: 'acme' and 'globex'" in capsys.readouterr().err  # globex was read, silently
    assert main(["report", "all", "--db", str(db), "--brand", "ACME", "--html", str(tmp_path / "acme.html")]) == 0
    assert "no post has brand 'ACME'; did you mean 'acme'?" in capsys.readouterr().err  # the summary's tables are empty
    assert main(["report", "top_posts", "--db", str(db), "--html", str(tmp_path / "one.html")]) == 2
    assert "mmsa report all --html" in capsys.readouterr().err
    for name, param in (("top_posts", "limit=0"), ("disagreeing_posts", "limit=-1"), ("sentiment_spikes", "window=0")):
        assert main(["report", name, "--db", str(db), "--param", param]) == 2
        assert "must be a whole number of at least 1" in capsys.readouterr().err
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--from", "2024-03-20", "--to", "2024-03-01"]) == 2
    assert "date_from 2024-03-20 is after date_to 2024-03-01" in capsys.readouterr().err  # not an empty table
    assert main(["report", "share_of_voice", "--db", str(db), "--chart", str(tmp_path / "x.png"), "--param", "oops"]) == 2
    assert main(["report", "runs", "--db", str(db), "--chart", str(tmp_path / "runs.png")]) == 2
    assert capsys.readouterr().out == ""  # refused before printing anything


# --- charts, HTML, headline ------------------------------------------------------------------


@pytest.mark.parametrize("name", charts.CHARTS)
def test_each_chart_renders_a_real_png(db, tmp_path, name):
    """A chart is a PNG of real size (an empty figure is a few KB)."""
    out = charts.render_chart(name, db, tmp_path / f"{name}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


def test_charts_show_days_without_posts_as_zero_posts_not_a_line_across_them():
    """Posts on 03-01 and 03-05 only: the trend's volume line and the spikes chart's bars fall to 0 on the three
    days between, and their net sentiment and negative share are gaps, not lines drawn across."""
    import numpy as np

    series = [{"brand": "acme", "day": date(2024, 3, d), "posts": 5, "net_sentiment": 0.5, "negative_share": 0.2}
              for d in (1, 5)]
    fig = charts.trend_figure(series)
    volume, net = (ax.get_lines()[0] for ax in fig.axes[:2])
    assert list(volume.get_ydata()) == [5, 0, 0, 0, 5]
    assert np.isnan(np.asarray(net.get_ydata(), float)[1:4]).all()
    spikes = charts.spikes_figure(series, [])
    share = spikes.axes[1].get_lines()[0]
    assert len(share.get_xdata()) == 5 and np.isnan(np.asarray(share.get_ydata(), float)[1:4]).all()


def test_a_spike_day_of_unlabelled_posts_is_drawn_without_a_share():
    """A volume spike whose posts are all in a language the model does not cover has no negative share: the chart
    (drawn for a run's headline and `report all --html`) circles and labels only the spikes that have one."""
    series = [{"brand": "foo", "day": date(2024, 3, d), "posts": 2, "negative_share": 0.5} for d in range(1, 11)]
    series.append({"brand": "foo", "day": date(2024, 3, 11), "posts": 12, "negative_share": None})
    spike = {"brand": "foo", "day": date(2024, 3, 11), "kind": "volume", "rank": 1, "negative_share": None, "posts_z": 5.0,
             "negative_share_z": None}
    fig = charts.spikes_figure(series, [spike])
    fig.canvas.draw()
    assert "foo: 1 spike day" in _texts(fig)
    charts.plt.close("all")


def test_a_spike_of_untagged_posts_is_drawn_under_no_brand():
    """Untagged posts' spike (brand NULL) is circled on the "(no brand)" panel, which said "no spikes"."""
    series = [{"brand": None, "day": date(2024, 3, d), "posts": 2, "negative_share": 0.5} for d in range(1, 11)]
    series.append({"brand": None, "day": date(2024, 3, 11), "posts": 15, "negative_share": 0.4})
    spike = {"brand": None, "day": date(2024, 3, 11), "kind": "volume", "rank": 1, "negative_share": 0.4, "posts_z": 9.0,
             "negative_share_z": None}
    fig = charts.spikes_figure(series, [spike])
    assert "(no brand): 1 spike day" in _texts(fig)
    (circles,) = [line for line in fig.axes[1].get_lines() if line.get_marker() == "o"]
    assert list(circles.get_ydata()) == [0.4]
    charts.plt.close("all")


def test_charts_draw_a_brand_name_with_dollar_signs_as_written(tmp_path):
    """matplotlib reads "$...$" as mathematics: a brand "$^$" failed every chart (and with them a run's headline and
    `report all --html`), "a$x$b" came out as an italic x."""
    series = [{"brand": b, "day": date(2024, 3, d), "posts": 3, "net_sentiment": 0.1, "negative_share": 0.3}
              for b in ("$^$", "a$x$b") for d in (1, 2)]
    voice = [{"brand": b, "mentions": 6, "share_of_voice": 0.5, "positive_share_of_voice": 0.5,
              "negative_share_of_voice": 0.5} for b in ("$^$", "a$x$b")]
    for fig in (charts.trend_figure(series), charts.spikes_figure(series, []), charts.share_of_voice_figure(voice)):
        assert charts._png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
        assert any("a$x$b" in t for t in _texts(fig))


def _drawn(line) -> set[int]:
    """Indices of the points a line shows: its markers, and the ends of its segments (two values in a row)."""
    import numpy as np

    values = np.isfinite(np.asarray(line.get_ydata(), float))
    marked = set() if line.get_marker() in ("None", "", " ", None) else (
        set(range(len(values))) if line.get_markevery() is None else set(line.get_markevery()))
    joined = {i for i in range(len(values)) if values[i] and (
        (i > 0 and values[i - 1]) or (i + 1 < len(values) and values[i + 1]))}
    return (marked & set(np.flatnonzero(values))) | joined


@pytest.mark.parametrize("every", [1, 2, 3])
def test_charts_draw_every_value_of_a_long_series(every):
    """90 days with posts every `every` day: each day's net sentiment and negative share is drawn, also one with no
    value either side (a gap around it, and too many days for a marker on each), and the gaps stay gaps."""
    import numpy as np

    days = range(0, 90, every)
    series = [{"brand": "acme", "day": date.fromordinal(date(2025, 1, 1).toordinal() + d), "posts": 3,
               "net_sentiment": 0.5, "negative_share": 0.2} for d in days]
    net = charts.trend_figure(series).axes[1].get_lines()[0]
    share = charts.spikes_figure(series, []).axes[1].get_lines()[0]
    for line in (net, share):
        values = set(np.flatnonzero(np.isfinite(np.asarray(line.get_ydata(), float))))
        assert len(line.get_xdata()) == days[-1] + 1 and values == set(days)
        assert _drawn(line) == values
    charts.plt.close("all")


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(charts.matplotlib.text.Text)]


def test_charts_of_no_rows_say_no_data(db, tmp_path):
    """A brand without posts (or an empty database) draws each chart empty with a note; the spikes chart crashed."""
    assert all("no data" in _texts(fig) for fig in (charts.trend_figure([]), charts.share_of_voice_figure([]),
                                                    charts.spikes_figure([], [])))
    charts.plt.close("all")
    for name in charts.CHARTS:
        out = charts.render_chart(name, db, tmp_path / f"{name}.png", brand="nosuch")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_legends_name_untagged_posts_and_brands_starting_with_an_underscore():
    """Untagged posts are "(no brand)" as in the reports, not "None" and missing from the legend (share of voice
    leaves them out: they are no brand's voice); a "_promo" brand is in the legend, although matplotlib leaves out
    labels starting with "_"."""
    voice = [{"brand": b, "mentions": 2, "share_of_voice": 1 / 2, "positive_share_of_voice": 1 / 2,
              "negative_share_of_voice": 1 / 2} for b in ("acme", "_promo")]
    fig = charts.share_of_voice_figure([*voice, {"brand": None, "mentions": 5, "share_of_voice": None,
                                                 "positive_share_of_voice": None, "negative_share_of_voice": None}])
    legend = [t.get_text().lstrip("\u200b") for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["acme", "_promo"] and "Share of voice (4 mentions)" in _texts(fig)
    assert not [t for t in _texts(fig) if "None" in t]
    trend = [{"brand": b, "day": date(2024, 3, 1), "posts": 2, "net_sentiment": 0.5} for b in ("acme", None, "_promo")]
    legend = [t.get_text().lstrip("\u200b") for t in charts.trend_figure(trend).axes[0].get_legend().get_texts()]
    assert legend == ["acme", "(no brand)", "_promo"]
    charts.plt.close("all")


@pytest.mark.parametrize("days, net", [(1, 0.1), (1, None), (2, 0.1), (3, 0.1), (5, 0.1), (40, 0.1)])
def test_trend_chart_dates_fit_the_span_without_warnings(days, net, recwarn):
    """One day (a nightly headline) gets a day either side, not an axis years wide, also when its net sentiment
    is undefined (no positive or negative post); 5 days get day ticks, not the hourly ones matplotlib's locator
    falls back to with a warning."""
    import matplotlib.dates as mdates

    rows = [{"brand": "acme", "day": date.fromordinal(date(2026, 11, 1).toordinal() + d), "posts": 3 + d,
             "net_sentiment": net} for d in range(days)]
    fig = charts.trend_figure(rows)
    fig.canvas.draw()
    axis = fig.axes[-1]
    low, high = axis.get_xlim()
    assert days - 1 <= high - low <= 1.1 * days + 2
    ticks = [mdates.num2date(t) for t in axis.get_xticks() if low <= t <= high]
    assert 2 <= len(ticks) <= 8 and all(t.hour == 0 for t in ticks)
    assert not [w for w in recwarn if "AutoDateLocator" in str(w.message)]
    charts.plt.close(fig)


def test_reports_without_a_chart_say_so(db, tmp_path):
    """--chart on a report with no chart is an error, not an empty file."""
    with pytest.raises(ValueError, match="no chart"):
        charts.render_chart("runs", db, tmp_path / "runs.png")
    assert not (tmp_path / "runs.png").exists()


def test_html_summary_is_one_offline_page_with_every_report_and_chart(db, tmp_path):
    """`mmsa report all --html`: every report's table, 4 embedded charts, nothing fetched."""
    out = tmp_path / "summary.html"
    assert main(["report", "all", "--db", str(db), "--html", str(out), "--from", "2024-03-04"]) == 0
    page = out.read_text()
    assert out.stat().st_size > 100_000
    assert page.count('src="data:image/png;base64,') == len(charts.CHARTS)
    assert "http://" not in page.replace("https://img.example/", "")  # only data values, no assets
    for name, _ in report.list_reports():
        assert f'<h2 id="{name}">' in page
    # It leads with the brand overview and the spikes, not with the alphabet; data quality comes last.
    order = sorted((page.index(f'<h2 id="{name}">'), name) for name, _ in report.list_reports())
    assert [name for _, name in order][:3] == ["daily_brand_sentiment", "sentiment_spikes", "brand_prevalence"]
    # The estimated shares with their intervals and the counted ones beside them, per brand and week.
    section = page[page.index('<h2 id="brand_prevalence">'):page.index('<h2 id="period_over_period">')]
    for column in ("negative_share_low", "net_sentiment_high", "counted_negative_share", "method"):
        assert f"<th>{column}</th>" in section
    assert "<td>acme</td><td>2024-03-04</td><td>2024-03-10</td><td>34</td>" in section
    assert [name for _, name in order][-1] == "model_versions"
    assert "acme-0314-09" in page and "date_from=2024-03-04" in page


def test_headline_markdown_for_the_latest_and_a_given_run(db, tmp_path):
    """The nightly headline: run counts, week-over-week per brand, the spike, disagreement."""
    md, paths = charts.headline(db, tmp_path)
    assert "run `run-2`" in md and "64 posts in, 63 scored, 1 rejected" in md
    assert "| acme | 42 | +23.5% | +0.10 | -0.32 | 33.3% | +12.7 pp |" in md
    assert "**acme** 2024-03-14: volume+negative_share (10 posts, 80% negative" in md
    assert "globex: 33.3% disagree, 33.3% opposite (7 positive text + negative image)" in md
    assert [p.name for p in paths] == ["trend.png", "spikes.png"] and all(p.stat().st_size > 20_000 for p in paths)
    assert "run `run-0`" in report.headline_markdown(db, run_id="run-0").markdown
    assert "No run nope" in report.headline_markdown(db, run_id="nope").markdown


def test_headline_names_posts_without_a_brand_and_says_when_no_post_has_both_text_and_image(tmp_path):
    """An untagged post is "(no brand)", not "None"; a brand whose posts have no image gets no 0% disagreement;
    one whose posts are all unscored has no negative share ("n/a", not "0.0%")."""
    db = reportdata.build(tmp_path / "headline.duckdb")
    with store.connect(db) as con:
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('nobrand-1' AS post_id, []::VARCHAR[] AS brands, "
                    "NULL AS image_label, NULL AS image_p_positive, NULL AS image_p_neutral, NULL AS image_p_negative) "
                    "FROM scored_posts WHERE post_id = 'acme-0317-00' AND model_version = 'v2'")
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('fr-1' AS post_id, ['initech'] AS brands, 'fr' AS lang, "
                    "NULL AS image_status, 'unsupported_language' AS unscored_reason, NULL AS label, NULL AS p_positive, "
                    "NULL AS p_neutral, NULL AS p_negative, NULL AS sentiment_score, NULL AS text_label, "
                    "NULL AS text_p_positive, NULL AS text_p_neutral, NULL AS text_p_negative, NULL AS image_label, "
                    "NULL AS image_p_positive, NULL AS image_p_neutral, NULL AS image_p_negative, [] AS images, "
                    "[] AS brand_scores) FROM scored_posts WHERE post_id = 'acme-0317-00' AND model_version = 'v2'")
        con.execute("INSERT INTO scored_posts SELECT * REPLACE ('odd-1' AS post_id, ['<b>Co|rp</b> ![](http://t/x)'] AS brands) "
                    "FROM scored_posts WHERE post_id = 'acme-0317-00' AND model_version = 'v2'")
    md = report.headline_markdown(db).markdown
    # a dump's brand as words: its | cut the table, its markup was rendered (the artifact is markdown)
    assert "| \\<b\\>Co\\|rp\\</b\\> !\\[\\](http://t/x) | 1 |" in md
    assert "None" not in md and "| (no brand) | 1 |" in md
    assert "| initech | 1 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "- (no brand): no post with both a text and an image label" in md


# --- analyst snapshot ----------------------------------------------------------------------

ANALYST = """
import sys, duckdb
path, read_only = sys.argv[1], sys.argv[2] == "ro"
con = duckdb.connect(path, read_only=read_only)
for line in sys.stdin:
    if line.strip() == "reconnect":
        con.close()
        con = duckdb.connect(path, read_only=read_only)
    print(con.execute("SELECT count(*), max(post_id) FROM post_sentiment").fetchone(), flush=True)
"""


class Analyst:
    """A separate process holding one connection (read-only unless `writer`), queried line by line."""

    def __init__(self, path: Path, writer: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-c", ANALYST, str(path), "rw" if writer else "ro"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ask(self, command: str = "query") -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line, self.proc.stderr.read()
        return line

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def _add_post(con: duckdb.DuckDBPyConnection, post_id: str) -> None:
    """One more acme v2 post (a copy of acme-0304-00 under a new id)."""
    con.execute("INSERT INTO scored_posts SELECT * REPLACE ($id AS post_id) FROM scored_posts "
                "WHERE post_id = 'acme-0304-00' AND model_version = 'v2'", {"id": post_id})


def test_a_reader_on_the_pipeline_database_would_block_the_writer(tmp_path):
    """Why the snapshot exists: DuckDB refuses a writer while another process reads the file."""
    db = reportdata.build(tmp_path / "pipeline.duckdb")
    analyst = Analyst(db)
    try:
        assert analyst.ask() == "(125, 'globex-0317-02')"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(db))
    finally:
        analyst.close()


def test_reports_on_a_database_being_written_point_to_the_snapshot(tmp_path):
    """While the pipeline holds its database, `mmsa report` on it says where to read instead."""
    db = reportdata.build(tmp_path / "pipeline.duckdb")
    writer = Analyst(db, writer=True)
    try:
        assert writer.ask() == "(125, 'globex-0317-02')"
        with pytest.raises(ValueError, match="pipeline.analyst.duckdb"):
            report.run_report("runs", db)
    finally:
        writer.close()


def test_analyst_keeps_a_consistent_snapshot_while_the_pipeline_writes_and_republishes(tmp_path):
    """The writer updates and republishes under an open analyst connection; both succeed, the
    analyst sees the old snapshot until it reconnects, then the new one."""
    db = reportdata.build(tmp_path / "pipeline.duckdb")
    snap = publish.publish_snapshot(db)
    assert snap == tmp_path / "pipeline.analyst.duckdb"
    analyst = Analyst(snap)
    try:
        assert analyst.ask() == "(125, 'globex-0317-02')"
        with store.connect(db) as con:
            _add_post(con, "zz-new-1")
        assert publish.publish_snapshot(db) == snap
        assert analyst.ask() == "(125, 'globex-0317-02')"  # still the old, whole snapshot
        assert report.run_report("share_of_voice", snap)[1].to_pylist() == [77, 35]  # new readers see the new one
        assert analyst.ask("reconnect") == "(126, 'zz-new-1')"
        # The pipeline may also publish from the connection it still holds.
        with store.connect(db) as con:
            _add_post(con, "zz-new-2")
            publish.publish_snapshot(db, con=con)
        assert analyst.ask() == "(126, 'zz-new-1')"
        assert analyst.ask("reconnect") == "(127, 'zz-new-2')"
    finally:
        analyst.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.analyst.duckdb", "pipeline.duckdb"]
