"""Class shares of a group of posts (a brand's week, say) from the model's calibrated probabilities, corrected
for prior shift, with 95% bootstrap intervals; and the artificial-prevalence protocol that chose the method.

Counting argmax labels (CC) is biased toward the class mix the classifier was trained on: a model trained on
tweets that are 16% negative under-counts a stream that is 80% negative, however good it is. The corrections
here use two statistics of the classifier measured on labelled posts it did not train on (`quantification_stats`,
kept in the model folder's config.json under "quantification" and in DuckDB's table `models`):

- PCC: the mean probability per class (unbiased only when the group's mix equals the training mix);
- ACC / PACC: the counted (or mean-probability) shares are P(predicted | true) @ true shares; the 3x3 system
  is solved by least squares on the simplex (the shares are non-negative and sum to one);
- SLD (Saerens, Latinne & Decaestecker 2002, a.k.a. EMQ): EM re-estimates the group's prior, rescaling every
  post's probabilities by new prior / training prior until the mean of the rescaled probabilities is the prior;
- SLD_BCTS, the default: SLD after bias-corrected temperature scaling (Alexandari et al. 2020) fitted on the
  same labelled posts, since SLD needs probabilities calibrated at the training prior, and a class-weighted
  head's are not.

Intervals: percentiles over bootstrap resamples of the group's posts, never narrower than the chance variation
of that many posts, and widened by the default method's systematic error measured with the statistics.

QuaPy implements CC to SLD; it is not a dependency because its install pulls pandas, xlrd, a dataset
downloader and an sdist-only package that scoring never uses. results/quantification_quapy.md shows that the
estimators here agree with QuaPy's (benchmarks/quapy_agreement.py).

Estimators take probabilities (N, 3) in LABELS order. Bootstrap resamples are weights (B, N) of how often each
post was drawn, so every estimator runs over all resamples at once as matrix products.
"""

from __future__ import annotations

import itertools
import json

import numpy as np

from mmsa.schema import LABELS

K = len(LABELS)
METHODS = ("cc", "pcc", "acc", "pacc", "sld", "sld_bcts")
# Chosen by the artificial-prevalence protocol (results/quantification.md): plain SLD trusts the probabilities
# to be calibrated at the training prior, which a class-weighted head's are not; recalibrating them first
# (bias-corrected temperature scaling, fitted with the other statistics) makes it the most accurate.
DEFAULT_METHOD = "sld_bcts"
FALLBACK = "pcc"  # needs no statistics of the classifier
RESAMPLES = 300
BOOTSTRAP_MAX = 20_000
SEED = 0
EM_TOL = 1e-5  # shares to a thousandth of a point; tighter only costs iterations
EM_MAX_ITER = 1000


def quantification_stats(probs: np.ndarray, labels: np.ndarray, seed: int = SEED) -> dict:
    """What the estimators need to know of a classifier, from its out-of-fold (calibrated) probabilities on
    labelled posts and their true labels (indices into LABELS): the training prior; per true class the share
    of posts predicted as each class (ACC) and the mean probabilities (PACC); the recalibration of sld_bcts;
    and `systematic_error`, how far the default method's shares (and net sentiment) stay off on large bags of
    these posts at other class mixes (root mean square over bags and classes), which intervals add to what
    resampling measures. A JSON-ready dict, the value of config.json's "quantification"."""
    stats = _base_stats(probs, labels)
    stats["systematic_error"] = _systematic_error(np.asarray(probs, dtype=float), np.asarray(labels), seed)
    return stats


def _base_stats(probs: np.ndarray, labels: np.ndarray) -> dict:
    probs, labels = _check(probs), np.asarray(labels)
    if len(labels) != len(probs) or not np.isin(labels, np.arange(K)).all():
        raise ValueError(f"labels must be {len(probs)} class indices in 0..{K - 1}")
    counts = np.bincount(labels, minlength=K)
    if counts.min() == 0:
        raise ValueError(f"every class needs labelled posts; counts {dict(zip(LABELS, counts.tolist()))}")
    onehot = np.eye(K)[probs.argmax(1)]
    t, bias = bias_corrected_temperature(probs, labels)
    return {
        "labels": list(LABELS),
        "n": int(len(labels)),
        "prior": (counts / counts.sum()).tolist(),
        # row = true class, column = predicted class: P(predicted | true) and E[p | true]
        "confusion": [onehot[labels == c].mean(0).tolist() for c in range(K)],
        "mean_probs": [probs[labels == c].mean(0).tolist() for c in range(K)],
        "calibration": {"temperature": t, "bias": bias.tolist()},
    }


def _systematic_error(probs: np.ndarray, labels: np.ndarray, seed: int, size: int = 2000, bags: int = 3) -> dict:
    """Statistics from one half of the posts, bags of `size` from the other at every NEGATIVE_SHARES x
    POSITIVE_PARTS mix: the root mean square error of DEFAULT_METHOD's shares and net sentiment."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), bool)
    for c in range(K):  # stratified halves
        rows = rng.permutation(np.flatnonzero(labels == c))
        half[rows[: len(rows) // 2]] = True
    stats = _base_stats(probs[half], labels[half])
    by_class = [np.flatnonzero(~half & (labels == c)) for c in range(K)]
    share_errors, net_errors, natural = [], [], _natural_part(labels)
    for negative, part in itertools.product(NEGATIVE_SHARES, POSITIVE_PARTS):
        part = natural if part is None else part
        counts = _bag_counts(size, negative, part)
        for _ in range(bags):
            rows = np.concatenate([rng.choice(by_class[c], counts[c]) for c in range(K)])
            err = estimate(probs[rows], DEFAULT_METHOD, stats) - counts / size
            share_errors += err.tolist()
            net_errors.append(err[POSITIVE] - err[NEGATIVE])
    return {"share": float(np.sqrt(np.mean(np.square(share_errors)))),
            "net": float(np.sqrt(np.mean(np.square(net_errors))))}


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != K:
        raise ValueError(f"probabilities must be (N, {K}) in the order {LABELS}, got shape {probs.shape}")
    return probs


def method_for(stats: dict | None, wanted: str = DEFAULT_METHOD) -> str:
    """The method that can run with `stats`: `wanted`, or PCC when the model has no statistics."""
    if wanted not in METHODS:
        raise ValueError(f"unknown quantification method {wanted!r}; known: {', '.join(METHODS)}")
    return wanted if stats or wanted in ("cc", "pcc") else FALLBACK


def _simplex_lstsq(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """argmin ||M p - q|| over the simplex, for each row of q (B, K): the best of the equality-constrained
    solutions on every support that is feasible (exact for this convex problem; 7 supports for 3 classes)."""
    best = np.full((len(q), K), np.nan)
    best_loss = np.full(len(q), np.inf)
    for size in range(K, 0, -1):
        for support in itertools.combinations(range(K), size):
            s = list(support)
            ms = m[:, s]
            # KKT system of min ||Ms p - q||^2 s.t. sum p = 1: [2 Ms'Ms 1; 1' 0] [p; l] = [2 Ms'q; 1]
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = 2 * ms.T @ ms
            kkt[:size, size] = kkt[size, :size] = 1
            rhs = np.concatenate([2 * q @ ms, np.ones((len(q), 1))], 1)
            try:
                sol = np.linalg.solve(kkt, rhs.T).T[:, :size]
            except np.linalg.LinAlgError:  # a singular sub-system (classes the classifier cannot tell apart)
                continue
            p = np.zeros((len(q), K))
            p[:, s] = sol
            feasible = (sol >= -1e-12).all(1)
            loss = np.linalg.norm(p @ m.T - q, axis=1)
            better = feasible & (loss < best_loss - 1e-15)
            best[better], best_loss[better] = p[better], loss[better]
    return np.clip(best, 0, None) / np.clip(best, 0, None).sum(1, keepdims=True)


def _sld(probs: np.ndarray, weights: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """EM prior re-estimation for every row of `weights` (B, N) at once, accelerated by SQUAREM (Varadhan &
    Roland 2008: two EM steps, then an extrapolation along them), which reaches EM's fixed point in a fraction
    of its iterations when classes overlap; a row stops once its shares move less than EM_TOL.

    With r = q / prior, a post's rescaled probabilities are p * r / (p . r), so one EM step is
    r * (weights / (r @ p')) @ p / total: two matrix products, no (B, N, K) array."""
    prior = np.clip(prior, 1e-12, None)
    q = np.tile(prior, (len(weights), 1))
    total = weights.sum(1, keepdims=True)
    active = np.arange(len(weights))

    def em(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        r = q / prior
        return r * ((weights[rows] / (r @ probs.T)) @ probs) / total[rows]

    for _ in range(EM_MAX_ITER):
        q0 = q[active]
        q1 = em(q0, active)
        q2 = em(q1, active)
        step, bend = q1 - q0, q2 - 2 * q1 + q0
        alpha = -np.sqrt((step ** 2).sum(1, keepdims=True) / np.maximum((bend ** 2).sum(1, keepdims=True), 1e-300))
        alpha = np.minimum(alpha, -1.0)  # -1 gives q2 itself: never less than two plain EM steps
        jump = q0 - 2 * alpha * step + alpha ** 2 * bend
        jump = np.where((jump > 0).all(1, keepdims=True), jump, q2)  # outside the simplex: keep the EM steps
        new = em(jump / jump.sum(1, keepdims=True), active)
        moved = np.abs(new - q0).max(1)
        q[active] = new
        active = active[moved >= EM_TOL]
        if not len(active):
            break
    return q


def estimate_many(probs: np.ndarray, weights: np.ndarray, method: str, stats: dict | None) -> np.ndarray:
    """Class shares (B, K) of `probs` (N, K) under each row of `weights` (B, N): row b counts post n
    weights[b, n] times (a bootstrap resample, or all ones for the group itself)."""
    probs = _check(probs)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if method not in METHODS:
        raise ValueError(f"unknown quantification method {method!r}; known: {', '.join(METHODS)}")
    if method not in ("cc", "pcc") and not stats:
        raise ValueError(f"method {method} needs the model's quantification statistics")
    total = weights.sum(1, keepdims=True)
    if method in ("cc", "acc"):
        counted = weights @ np.eye(K)[probs.argmax(1)] / total
        return counted if method == "cc" else _simplex_lstsq(np.asarray(stats["confusion"]).T, counted)
    mean = weights @ probs / total
    if method == "pcc":
        return mean
    if method == "pacc":
        return _simplex_lstsq(np.asarray(stats["mean_probs"]).T, mean)
    if method == "sld_bcts":
        cal = stats["calibration"]
        probs = recalibrated(probs, cal["temperature"], np.asarray(cal["bias"]))
    return _sld(probs, weights, np.asarray(stats["prior"], dtype=float))


def estimate(probs: np.ndarray, method: str, stats: dict | None) -> np.ndarray:
    """The class shares (K,) of one group of posts."""
    return estimate_many(probs, np.ones((1, len(probs))), method, stats)[0]


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) counts of each post in resamples of the n posts with replacement."""
    return rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)


def shares_with_intervals(probs: np.ndarray, stats: dict | None, method: str = DEFAULT_METHOD,
                          resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """One group's estimate: {label}_share, {label}_share_low / _high (the 2.5 and 97.5 percentiles over
    bootstrap resamples of its posts, widened to sampling_interval where that is wider, and by the method's
    systematic error where the statistics measured it), net_sentiment =
    positive − negative share with its bounds, and the
    method that ran ("pcc (model has no quantification statistics)" when the model has none). An empty group gives NULLs.
    A fixed seed makes a report give the same numbers every time it runs."""
    used = method_for(stats, method)
    label = used if used == method else f"{used} (model has no quantification statistics)"
    out: dict = {"method": label}
    probs = _check(probs) if len(probs) else np.zeros((0, K))
    if not len(probs):
        for name in (*(f"{lab}_share" for lab in LABELS), "net_sentiment"):
            out[name] = out[f"{name}_low"] = out[f"{name}_high"] = None
        return out
    rng = np.random.default_rng(seed)
    point = estimate(probs, used, stats)
    # A large group is resampled through a subsample of BOOTSTRAP_MAX posts, its spread scaled by sqrt(m / n)
    # (the estimate's spread shrinks as 1 / sqrt(n)): a year of a big brand stays seconds and megabytes.
    sub = probs if len(probs) <= BOOTSTRAP_MAX else probs[rng.choice(len(probs), BOOTSTRAP_MAX, replace=False)]
    resampled = estimate_many(sub, bootstrap_weights(len(sub), resamples, rng), used, stats)
    if len(sub) < len(probs):
        resampled = point + (resampled - estimate(sub, used, stats)) * np.sqrt(len(sub) / len(probs))
    shares = np.concatenate([point[None], resampled])
    contrasts = {f"{lab}_share": np.eye(K)[k] for k, lab in enumerate(LABELS)}
    contrasts["net_sentiment"] = np.eye(K)[LABELS.index("positive")] - np.eye(K)[LABELS.index("negative")]
    systematic = (stats or {}).get("systematic_error") if used == DEFAULT_METHOD else None
    for name, c in contrasts.items():
        values = shares @ c
        est = round(float(values[0]), 10) + 0.0  # float noise (-4.6e-12) and -0.0 would print as "-0.0000"
        low, high = np.percentile(values[1:], [2.5, 97.5])
        floor_low, floor_high = sampling_interval(shares[0], c, len(probs))
        low, high = min(low, floor_low), max(high, floor_high)
        if systematic:  # the estimator's own error on large groups, beside the resampling's
            margin = Z95 * systematic["net" if name == "net_sentiment" else "share"]
            floor = -1.0 if name == "net_sentiment" else 0.0  # not -0.0: a report would print "-0.0000"
            low = max(floor, est - float(np.hypot(est - low, margin)))
            high = min(1.0, est + float(np.hypot(high - est, margin)))
        out[name], out[f"{name}_low"], out[f"{name}_high"] = est, float(low), float(high)
    return out


Z95 = 1.959963984540054


def sampling_interval(shares: np.ndarray, c: np.ndarray, n: int) -> tuple[float, float]:
    """The 95% interval of c . shares from n posts whose classes were known (an adjusted Wald interval, one
    pseudo-post added to each class, as Agresti & Caffo add them). The bootstrap's interval is never narrower:
    resampling a group of 5 posts of which none is positive gives 0 every time, a confident number where
    the 5 posts say little."""
    smoothed = (shares * n + 1) / (n + K)
    centre = float(c @ smoothed)
    half = Z95 * np.sqrt(max(float((c ** 2) @ smoothed) - centre ** 2, 0.0) / (n + K))
    low, high = (0.0, 1.0) if c.min() >= 0 else (-1.0, 1.0)
    return max(low, centre - half), min(high, centre + half)


def stats_from_json(text: str | None) -> dict | None:
    """A `models.quantification` JSON value as stats (None when the model has none)."""
    return json.loads(text) if text else None


# --- choosing the method: the artificial-prevalence protocol ------------------------------------------------

NEGATIVE_SHARES = (0.05, 0.16, 0.3, 0.5, 0.7, 0.9)
# The positive part of what is not negative: a third, the data's own ratio (None), two thirds.
POSITIVE_PARTS = (1 / 3, None, 2 / 3)
BAG_SIZES = (30, 100, 300, 1000, 3000)
NEGATIVE = LABELS.index("negative")
POSITIVE = LABELS.index("positive")


def bias_corrected_temperature(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(T, b) minimising the log-loss of softmax(log p / T + b): bias-corrected temperature scaling (Alexandari
    et al. 2020), which also moves each class's calibration, e.g. undoing a class weighting's prior."""
    from scipy.optimize import minimize

    z = np.log(np.clip(probs, 1e-300, 1.0))

    def nll(x: np.ndarray) -> float:
        s = z / np.exp(x[0]) + np.concatenate([[0.0], x[1:]])
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(labels)), labels] - np.log(np.exp(s).sum(1))).mean())

    x = minimize(nll, np.zeros(K), method="L-BFGS-B").x
    return float(np.exp(x[0])), np.concatenate([[0.0], x[1:]])


def recalibrated(probs: np.ndarray, t: float, bias: np.ndarray) -> np.ndarray:
    s = np.log(np.clip(probs, 1e-300, 1.0)) / t + bias
    s = np.exp(s - s.max(1, keepdims=True))
    return s / s.sum(1, keepdims=True)


def _candidates(stats: dict, tr_probs: np.ndarray) -> dict:
    """name -> (what it is, estimator of (probs, weights)) for the protocol; `stats` from the training folds."""
    mean_prior = {**stats, "prior": tr_probs.mean(0).tolist()}

    def plain(method: str, s: dict = stats):
        return lambda p, w: estimate_many(p, w, method, s)

    return {
        "cc": ("count of argmax labels", plain("cc")),
        "pcc": ("mean probability", plain("pcc")),
        "acc": ("counts adjusted by the out-of-fold confusion, least squares on the simplex", plain("acc")),
        "pacc": ("mean probabilities adjusted by the mean probability per true class", plain("pacc")),
        "sld": ("EM prior re-estimation (SLD/EMQ) from the training prior", plain("sld")),
        "sld_mean_prior": ("SLD from the mean training probability as the prior", plain("sld", mean_prior)),
        "sld_bcts": ("SLD on probabilities recalibrated by bias-corrected temperature scaling", plain("sld_bcts")),
    }


def _natural_part(labels: np.ndarray) -> float:
    """The data's own positive : neutral split, as the positive part (POSITIVE_PARTS' None)."""
    natural = np.bincount(labels, minlength=K)
    return natural[POSITIVE] / (natural.sum() - natural[NEGATIVE])


def _bag_counts(size: int, negative: float, positive_part: float) -> np.ndarray:
    shares = np.zeros(K)
    shares[NEGATIVE] = negative
    shares[POSITIVE] = (1 - negative) * positive_part
    shares[LABELS.index("neutral")] = 1 - shares.sum()
    counts = np.floor(shares * size).astype(int)
    counts[np.argmax(shares * size - counts)] += size - counts.sum()  # the rounding's remainder to one class
    return counts


def app_table(probs: np.ndarray, labels: np.ndarray, folds: int = 5, bags: int = 4, bag_sizes=BAG_SIZES,
              negative_shares=NEGATIVE_SHARES, positive_parts=POSITIVE_PARTS, coverage_method: str = DEFAULT_METHOD,
              coverage_bags: int = 1, resamples: int = 200, seed: int = 0) -> dict:
    """The artificial-prevalence protocol over labelled posts with calibrated out-of-fold probabilities.

    The posts are split into `folds` stratified folds; each method takes its statistics from the other folds
    and estimates bags drawn from the held-out fold at every negative share x positive part x bag size
    (`bags` bags each; a class drawn with replacement when the fold has fewer of it than the bag needs).
    Error = |estimated − true share of the bag|, per class. Returns the errors per (method, negative share,
    bag size), per method overall, and the 95% bootstrap interval coverage of `coverage_method` (over
    `coverage_bags` bags per cell, `resamples` resamples each) per bag size."""
    from sklearn.model_selection import StratifiedKFold

    probs, labels = _check(probs), np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = [_natural_part(labels) if p is None else p for p in positive_parts]
    errors: dict = {}  # (method, negative share, bag size) -> list of (mean abs error, max abs error)
    covered: dict = {}  # bag size -> list of (covered per class)
    widths: dict = {}
    what = {}
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(probs, labels)
    for tr, te in split:
        stats = quantification_stats(probs[tr], labels[tr], seed)
        methods = _candidates(stats, probs[tr])
        what = {name: w for name, (w, _) in methods.items()}
        by_class = [te[labels[te] == c] for c in range(K)]
        for negative, part, size in itertools.product(negative_shares, parts, bag_sizes):
            counts = _bag_counts(size, negative, part)
            for b in range(bags):
                rows = np.concatenate([rng.choice(by_class[c], counts[c], replace=counts[c] > len(by_class[c]))
                                       for c in range(K)])
                truth = counts / size
                ones = np.ones((1, size))
                for name, (_, run) in methods.items():
                    err = np.abs(run(probs[rows], ones)[0] - truth)
                    errors.setdefault((name, negative, size), []).append((err.mean(), err.max()))
                if b < coverage_bags:
                    est = shares_with_intervals(probs[rows], stats, coverage_method, resamples, seed=b)
                    covered.setdefault(size, []).append(
                        [est[f"{lab}_share_low"] <= truth[k] <= est[f"{lab}_share_high"] for k, lab in enumerate(LABELS)])
                    widths.setdefault(size, []).append(est["negative_share_high"] - est["negative_share_low"])
    cells = [{"method": m, "negative_share": s, "bag_size": n, "bags": len(v),
              "mean_abs_error": float(np.mean([e[0] for e in v])), "max_abs_error": float(np.mean([e[1] for e in v]))}
             for (m, s, n), v in errors.items()]
    overall = {m: {"mean_abs_error": float(np.mean([c["mean_abs_error"] for c in cells if c["method"] == m])),
                   "max_abs_error": float(np.mean([c["max_abs_error"] for c in cells if c["method"] == m]))}
               for m in what}
    return {
        "n": int(len(labels)), "folds": folds, "bags_per_cell": bags * len(parts), "prior": (np.bincount(labels, minlength=K) / len(labels)).tolist(),
        "positive_parts": [float(p) for p in parts], "methods": what, "cells": cells, "overall": overall,
        "best": min(overall, key=lambda m: overall[m]["mean_abs_error"]),
        "coverage": {"method": coverage_method, "resamples": resamples,
                     "by_bag_size": {str(n): {"bags": len(v), "coverage": float(np.mean(v)),
                                              "negative_interval_width": float(np.mean(widths[n]))}
                                     for n, v in covered.items()}},
    }
