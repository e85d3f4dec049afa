"""Class-share estimation under prior shift (mmsa.quantify): a classifier trained on a mix that is 16% negative,
scoring a bag that is 80% negative, as brand streams are; the estimators, their intervals and the protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from quantdata import NEG, NEU, POS, draw
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

import quantdata
from mmsa import quantify
from mmsa.schema import LABELS



@pytest.fixture(scope="module")
def classifier():
    return quantdata.classifier()


def test_stats_describe_the_classifier(classifier):
    _, stats = classifier
    assert stats["labels"] == list(LABELS) and stats["n"] == 5000
    assert stats["prior"] == pytest.approx([0.4, 0.44, 0.16])
    for matrix in (stats["confusion"], stats["mean_probs"]):
        assert np.allclose(np.sum(matrix, 1), 1)  # each true class's row is a distribution
        assert all(row[c] > 1 / 3 for c, row in enumerate(matrix))  # better than chance on every class
    # A well-calibrated classifier needs almost no recalibration; its estimates stay within a few points.
    assert stats["calibration"]["temperature"] == pytest.approx(1, abs=0.1)
    assert np.abs(stats["calibration"]["bias"]).max() < 0.2
    assert 0 < stats["systematic_error"]["share"] < 0.03 and 0 < stats["systematic_error"]["net"] < 0.05
    with pytest.raises(ValueError, match="every class"):
        quantify.quantification_stats(np.full((4, 3), 1 / 3), np.array([0, 0, 1, 1]))


def test_an_80_percent_negative_bag_is_estimated_within_its_interval_where_counting_misses(classifier):
    model, stats = classifier
    x, y = draw({POS: 50, NEU: 50, NEG: 400}, np.random.default_rng(2))
    probs = model.predict_proba(x)
    est = quantify.shares_with_intervals(probs, stats)
    assert est["method"] == quantify.DEFAULT_METHOD == "sld_bcts"
    truth = np.bincount(y, minlength=3) / len(y)
    assert est["negative_share_low"] <= truth[NEG] <= est["negative_share_high"]
    assert abs(est["negative_share"] - 0.8) < 0.06
    counted = quantify.shares_with_intervals(probs, stats, "cc")
    assert counted["negative_share_high"] < 0.8 - 0.05  # counting is biased toward the 16% it was trained on
    assert counted["negative_share"] < est["negative_share_low"]
    for label in LABELS:
        assert est[f"{label}_share_low"] <= est[f"{label}_share"] <= est[f"{label}_share_high"]
    assert est["net_sentiment"] == pytest.approx(est["positive_share"] - est["negative_share"])
    assert est["net_sentiment_low"] < est["net_sentiment"] < est["net_sentiment_high"] < 0


def test_a_small_bag_gets_a_wide_interval(classifier):
    model, stats = classifier
    x, _ = draw({POS: 100, NEU: 100, NEG: 800}, np.random.default_rng(3))
    probs = model.predict_proba(x)
    width = {n: (lambda e: e["negative_share_high"] - e["negative_share_low"])(
        quantify.shares_with_intervals(probs[np.random.default_rng(n).choice(1000, n, replace=False)], stats))
        for n in (5, 50, 1000)}
    assert width[5] > 0.4 > width[50] > width[1000]


def test_a_bound_at_zero_is_zero_not_minus_zero(classifier):
    """A bag with no negative post: its negative share's lower bound is 0.0, which a report prints as 0.0000
    (a -0.0 printed as -0.0000)."""
    model, stats = classifier
    x, _ = draw({POS: 60, NEU: 0, NEG: 0}, np.random.default_rng(4))
    est = quantify.shares_with_intervals(model.predict_proba(x), stats)
    lows = [est[f"{label}_share_low"] for label in ("neutral", "negative")]
    assert lows == [0.0, 0.0] and all(f"{v:.4f}" == "0.0000" for v in lows)


def test_without_statistics_the_estimate_falls_back_to_mean_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.6, 0.2]])
    est = quantify.shares_with_intervals(probs, None, "sld")
    assert est["method"].startswith("pcc") and "no quantification statistics" in est["method"]
    assert [est[f"{lab}_share"] for lab in LABELS] == pytest.approx(probs.mean(0))
    with pytest.raises(ValueError, match="needs the model's quantification statistics"):
        quantify.estimate(probs, "pacc", None)
    with pytest.raises(ValueError, match="unknown quantification method"):
        quantify.shares_with_intervals(probs, None, "median")
    empty = quantify.shares_with_intervals(np.zeros((0, 3)), None)
    assert empty["negative_share"] is None and empty["net_sentiment_high"] is None


def test_the_simplex_solver_finds_the_constrained_least_squares_optimum():
    rng = np.random.default_rng(4)
    for _ in range(30):
        m = rng.dirichlet(np.ones(3) * 0.7, size=3).T  # columns: P(predicted | true class)
        q = rng.dirichlet(np.ones(3))[None] + rng.normal(0, 0.15, size=(1, 3))  # often outside M's image
        ours = quantify._simplex_lstsq(m, q)[0]
        ref = minimize(lambda p: np.sum((m @ p - q[0]) ** 2), np.full(3, 1 / 3), method="SLSQP",
                       bounds=[(0, 1)] * 3, constraints={"type": "eq", "fun": lambda p: p.sum() - 1},
                       options={"ftol": 1e-14}).x
        assert ours.min() >= 0 and ours.sum() == pytest.approx(1)
        assert np.sum((m @ ours - q[0]) ** 2) <= np.sum((m @ ref - q[0]) ** 2) + 1e-9


def plain_em(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Saerens et al.'s EM as the paper writes it, run to a tight fixed point: the reference."""
    q = prior.copy()
    for _ in range(100_000):
        post = probs * (q / prior)
        new = (post / post.sum(1, keepdims=True)).mean(0)
        if np.abs(new - q).max() < 1e-13:
            break
        q = new
    return new


def test_accelerated_em_over_resamples_reaches_plain_em_fixed_point(classifier):
    model, stats = classifier
    x, _ = draw({POS: 30, NEU: 30, NEG: 140}, np.random.default_rng(5))
    probs = model.predict_proba(x)
    weights = quantify.bootstrap_weights(len(probs), 8, np.random.default_rng(0))
    together = quantify.estimate_many(probs, weights, "sld", stats)
    alone = [plain_em(np.repeat(probs, w.astype(int), axis=0), np.array(stats["prior"])) for w in weights]
    assert together == pytest.approx(np.array(alone), abs=5e-5)


def test_the_protocol_ranks_the_corrections_above_counting(classifier):
    rng = np.random.default_rng(6)
    x, y = draw({POS: 900, NEU: 1000, NEG: 400}, rng)
    probs = cross_val_predict(LogisticRegression(), x, y, cv=5, method="predict_proba")
    result = quantify.app_table(probs, y, folds=3, bags=1, bag_sizes=(100, 1000), negative_shares=(0.05, 0.5, 0.9),
                                positive_parts=(None,), resamples=50)
    overall = result["overall"]
    assert set(overall) >= {"cc", "pcc", "acc", "pacc", "sld"}
    assert overall["sld"]["max_abs_error"] < min(overall["pcc"]["max_abs_error"], overall["cc"]["max_abs_error"]) / 2
    extreme = {m: np.mean([c["max_abs_error"] for c in result["cells"] if c["method"] == m and c["negative_share"] == 0.9])
               for m in ("cc", "sld")}
    assert extreme["sld"] < extreme["cc"] / 2
    assert result["best"] != "cc"
    cov = result["coverage"]["by_bag_size"]
    assert set(cov) == {"100", "1000"} and cov["100"]["negative_interval_width"] > cov["1000"]["negative_interval_width"]


def test_the_protocol_writes_its_table_and_numbers_with_the_command(tmp_path):
    from mmsa import crossval

    x, y = draw({POS: 600, NEU: 700, NEG: 300}, np.random.default_rng(7))
    probs = cross_val_predict(LogisticRegression(), x, y, cv=5, method="predict_proba")
    out = tmp_path / "quantification.md"
    result = crossval.quantification_compare(probs, y, out, "synthetic", "mmsa quantify-compare --probs p.npz",
                                             folds=2, bags=1, bag_sizes=(50, 500), negative_shares=(0.1, 0.8),
                                             positive_parts=(None,), resamples=30)
    text = out.read_text()
    assert "Made by `mmsa quantify-compare --probs p.npz`" in text and "synthetic (n=1,600" in text
    assert f"| **{result['best']}** (best) |" in text
    for method in ("cc", "pcc", "acc", "pacc", "sld", "sld_bcts"):
        assert f"\n**{method}**\n" in text
    assert "| 50 | 4 |" in text  # 2 folds x 2 negative shares x 1 bag of 50 posts had intervals
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["overall"] == result["overall"] and saved["command"] == "mmsa quantify-compare --probs p.npz"


def test_a_large_group_is_resampled_through_a_subsample_with_the_same_spread(classifier, monkeypatch):
    model, stats = classifier
    x, y = draw({POS: 400, NEU: 400, NEG: 1200}, np.random.default_rng(8))
    probs = model.predict_proba(x)
    whole = quantify.shares_with_intervals(probs, stats, "pacc")
    monkeypatch.setattr(quantify, "BOOTSTRAP_MAX", 500)  # a quarter of the posts stand for the group
    sub = quantify.shares_with_intervals(probs, stats, "pacc")
    assert sub["negative_share"] == whole["negative_share"]  # the point estimate still reads every post
    width = {k: e["negative_share_high"] - e["negative_share_low"] for k, e in (("whole", whole), ("sub", sub))}
    assert width["sub"] == pytest.approx(width["whole"], rel=0.25)
    assert sub["negative_share_low"] < sub["negative_share"] < sub["negative_share_high"]
