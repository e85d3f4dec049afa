"""The brand_prevalence report on a real DuckDB file: estimated shares per brand and period with intervals that
widen as the period's posts get fewer, counted shares beside them, only labelled (post, brand) rows, and PCC
when the model has no quantification statistics."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pytest
import quantdata
import reportdata
from quantdata import NEG, NEU, POS, draw

from mmsa import report, store
from mmsa.cli import main
from mmsa.schema import LABELS, SCORED_SCHEMA

COLUMNS = ["brand", "period_start", "period_end", "posts",
           "positive_share", "positive_share_low", "positive_share_high",
           "neutral_share", "neutral_share_low", "neutral_share_high",
           "negative_share", "negative_share_low", "negative_share_high",
           "net_sentiment", "net_sentiment_low", "net_sentiment_high",
           "counted_positive_share", "counted_neutral_share", "counted_negative_share", "counted_net_sentiment",
           "method"]
QUIET_DAY, BUSY_DAY = date(2024, 3, 4), date(2024, 3, 5)


def scored(post_id: str, day: date, brands: list[str], probs: np.ndarray | None, model: str = "v2") -> dict:
    """One scored_posts row (the planted report row's other columns) with its sentiment toward each brand;
    probs None: brand_label NULL (a language the model does not cover)."""
    row = reportdata._row("acme", 0, day, 0, "neutral", model, "run-1")
    label = None if probs is None else LABELS[int(np.argmax(probs))]
    values = [None] * 3 if probs is None else [float(x) for x in probs]
    return {**row, "post_id": post_id, "brands": brands,
            "brand_scores": [{"brand": b, "brand_label": label, **{f"brand_p_{lab}": v for lab, v in zip(LABELS, values)}}
                             for b in brands]}


def build(path, stats: dict | None, model):
    """acme: 5 posts on QUIET_DAY and 500 on BUSY_DAY, 80% negative, scored by `model` (trained on a 16% negative
    mix; quantdata); plus rows that must never count."""
    rng = np.random.default_rng(0)
    rows = []
    for day, n in ((QUIET_DAY, 5), (BUSY_DAY, 500)):
        x, _ = draw({NEG: n * 4 // 5, POS: n // 10, NEU: n - n * 4 // 5 - n // 10}, rng)
        rows += [scored(f"acme-{day:%d}-{k:03d}", day, ["acme"], p) for k, p in enumerate(model.predict_proba(x))]
    rows.append(scored("masked-1", BUSY_DAY, ["acme"], None))  # an uncovered language: no label toward acme
    rows.append(scored("untagged-1", BUSY_DAY, [], np.array([0.1, 0.1, 0.8])))
    with store.connect(path) as con:
        con.register("rows", pa.Table.from_pylist(rows, schema=SCORED_SCHEMA))
        con.execute("INSERT INTO scored_posts SELECT * FROM rows")
        store.record_model(con, "v2", stats)
    return path


@pytest.fixture(scope="module")
def fitted():
    return quantdata.classifier()


@pytest.fixture(scope="module")
def db(tmp_path_factory, fitted):
    model, stats = fitted
    return build(tmp_path_factory.mktemp("prevalence") / "p.duckdb", stats, model)


def test_one_row_per_brand_and_day_with_the_documented_columns(db):
    table = report.run_report("brand_prevalence", db, per="day")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    assert [(r["brand"], r["period_start"], r["period_end"], r["posts"]) for r in rows] == [
        ("acme", QUIET_DAY, QUIET_DAY, 5), ("acme", BUSY_DAY, BUSY_DAY, 500)]  # the NULL-labelled post never counts
    for r in rows:
        assert r["method"] == "sld_bcts"
        assert sum(r[f"{lab}_share"] for lab in LABELS) == pytest.approx(1)
        assert sum(r[f"counted_{lab}_share"] for lab in LABELS) == pytest.approx(1)
        assert r["net_sentiment"] == pytest.approx(r["positive_share"] - r["negative_share"])
        for name in ("positive_share", "neutral_share", "negative_share", "net_sentiment"):
            assert r[f"{name}_low"] <= r[name] <= r[f"{name}_high"]


def test_five_posts_get_a_wider_interval_than_five_hundred(db):
    quiet, busy = report.run_report("brand_prevalence", db, per="day").to_pylist()
    for name in ("negative_share", "positive_share", "net_sentiment"):
        assert quiet[f"{name}_high"] - quiet[f"{name}_low"] > 2 * (busy[f"{name}_high"] - busy[f"{name}_low"])
    assert quiet["negative_share_high"] - quiet["negative_share_low"] > 0.3


def test_the_estimate_holds_an_80_percent_negative_day_that_counting_misses(db):
    busy = report.run_report("brand_prevalence", db, per="day", date_from=str(BUSY_DAY)).to_pylist()[0]
    assert busy["negative_share_low"] <= 0.8 <= busy["negative_share_high"]
    assert busy["counted_negative_share"] < busy["negative_share_low"]


def test_periods_week_month_total_and_the_filters(db):
    week = report.run_report("brand_prevalence", db).to_pylist()  # per defaults to week (Monday 2024-03-04)
    assert [(r["period_start"], r["period_end"], r["posts"]) for r in week] == [(QUIET_DAY, date(2024, 3, 10), 505)]
    month = report.run_report("brand_prevalence", db, per="month").to_pylist()
    assert [(r["period_start"], r["period_end"]) for r in month] == [(date(2024, 3, 1), date(2024, 3, 31))]
    cut = report.run_report("brand_prevalence", db, per="month", date_from="2024-03-05", date_to="2024-03-20").to_pylist()
    assert [(r["period_start"], r["period_end"]) for r in cut] == [(date(2024, 3, 5), date(2024, 3, 20))]  # the days counted
    whole = report.run_report("brand_prevalence", db, per="total", date_from="2024-01-01").to_pylist()
    assert [(r["period_start"], r["period_end"]) for r in whole] == [(QUIET_DAY, BUSY_DAY)]  # the posts' days
    total = report.run_report("brand_prevalence", db, per="total", date_to=str(QUIET_DAY)).to_pylist()
    assert [(r["period_start"], r["period_end"], r["posts"]) for r in total] == [(QUIET_DAY, QUIET_DAY, 5)]
    assert report.run_report("brand_prevalence", db, brand="globex").num_rows == 0
    with pytest.raises(ValueError, match="per must be day, week, month or total"):
        report.run_report("brand_prevalence", db, per="year")


def test_a_model_without_statistics_falls_back_to_mean_probabilities(tmp_path, fitted):
    db = build(tmp_path / "nostats.duckdb", None, fitted[0])
    rows = report.run_report("brand_prevalence", db, per="day").to_pylist()
    assert all(r["method"] == "pcc (model has no quantification statistics)" for r in rows)
    with store.connect(db) as con:
        mean = con.sql(f"SELECT avg(brand_p_negative) FROM post_sentiment WHERE day = DATE '{BUSY_DAY}' "
                       "AND brand = 'acme' AND brand_label IS NOT NULL").fetchall()[0][0]
    assert rows[1]["negative_share"] == pytest.approx(mean)


def test_the_same_report_twice_gives_the_same_numbers(db):
    first = report.run_report("brand_prevalence", db, per="day")
    assert report.run_report("brand_prevalence", db, per="day").equals(first)


def test_cli_per_option(db, capsys):
    assert main(["report", "brand_prevalence", "--db", str(db), "--per", "total", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["posts"] == 505 and row["method"] == "sld_bcts" and row["period_start"] == str(QUIET_DAY)
    assert main(["report", "daily_brand_sentiment", "--db", str(db), "--per", "day"]) == 2  # a report without periods
    assert "has no parameter per" in capsys.readouterr().err


def test_stats_written_per_model_are_read_per_model(tmp_path, fitted):
    """A second model version without statistics, scored later: the latest is read unless one is pinned."""
    path = build(tmp_path / "two.duckdb", fitted[1], fitted[0])
    later = scored("acme-v3-1", BUSY_DAY + timedelta(days=1), ["acme"], np.array([0.2, 0.3, 0.5]), model="v3")
    with store.connect(path) as con:
        con.register("later", pa.Table.from_pylist([{**later, "scored_at": reportdata.RUN_AT["run-2"]}],
                                                    schema=SCORED_SCHEMA))
        con.execute("INSERT INTO scored_posts SELECT * FROM later")
    latest = report.run_report("brand_prevalence", path, per="total").to_pylist()
    assert [(r["posts"], r["method"]) for r in latest] == [(1, "pcc (model has no quantification statistics)")]
    pinned = report.run_report("brand_prevalence", path, per="total", model_version="v2").to_pylist()
    assert [(r["posts"], r["method"]) for r in pinned] == [(505, "sld_bcts")]


def test_an_even_group_has_a_net_sentiment_of_zero_not_minus_zero():
    """Posts whose positive and negative probabilities mirror each other: net sentiment 0, printed "0.0000" whatever
    float noise the estimate carries (-1e-12 would print "-0.0000")."""
    from mmsa import quantify

    rng = np.random.default_rng(1)
    for _ in range(50):
        half = rng.dirichlet([1, 1, 1], size=7)
        net = quantify.shares_with_intervals(np.concatenate([half, half[:, ::-1]]), None)["net_sentiment"]
        assert f"{net:.4f}" == "0.0000"
