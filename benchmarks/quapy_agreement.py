"""Do mmsa.quantify's estimators agree with QuaPy's? Run with QuaPy importable but not installed in the project
(its install pulls pandas, xlrd, a dataset downloader and an sdist-only package that scoring never uses):

    .venv/bin/pip install --target /tmp/qpx quapy==0.2.3
    PYTHONPATH=/tmp/qpx .venv/bin/python benchmarks/quapy_agreement.py [--probs FILE.npz] [--out results/quantification_quapy.md]

On the SemEval tweets' calibrated out-of-fold probabilities of the shipped recipe's general text head (as
`mmsa quantify-compare` makes them; or the `probs` / `labels` of --probs), half of the posts give the
statistics and bags from the other half at negative shares 5% to 90% are estimated by both libraries. QuaPy's
classifier-free entry points are used (the statistics from the same probabilities): ACC/PACC.getPteCondEstim +
ACC.solve_adjustment (least squares on the simplex, its default) + clipping, EMQ.EM from the training prior
(for sld_bcts on the probabilities as mmsa recalibrates them: that checks the EM, not the recalibration).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import quapy.functional as F
from quapy.method.aggregative import ACC, EMQ, PACC

from mmsa import crossval, files, quantify
from mmsa.data import resolve_data_dir


def quapy_estimate(method: str, probs: np.ndarray, tr_probs: np.ndarray, tr_labels: np.ndarray) -> np.ndarray:
    classes = np.arange(quantify.K)
    if method == "cc":
        return F.prevalence_from_labels(probs.argmax(1), classes=classes)
    if method == "pcc":
        return F.prevalence_from_probabilities(probs)
    if method == "acc":
        rates = ACC.getPteCondEstim(classes, tr_labels, tr_probs.argmax(1))
        counted = np.bincount(probs.argmax(1), minlength=quantify.K) / len(probs)
        return F.normalize_prevalence(ACC.solve_adjustment(rates, counted, method="inversion", solver="minimize"), "clip")
    if method == "pacc":
        rates = PACC.getPteCondEstim(classes, tr_labels, tr_probs)
        return F.normalize_prevalence(ACC.solve_adjustment(rates, probs.mean(0), method="inversion", solver="minimize"), "clip")
    prior = np.bincount(tr_labels, minlength=quantify.K) / len(tr_labels)
    if method == "sld_bcts":  # QuaPy's EM on mmsa's recalibration (QuaPy's own BCTS needs its abstention package)
        cal = quantify.quantification_stats(tr_probs, tr_labels)["calibration"]
        probs = quantify.recalibrated(probs, cal["temperature"], np.asarray(cal["bias"]))
    return EMQ.EM(prior, probs, epsilon=1e-8)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probs", help="an .npz of probs (N, 3) and labels (N,) (default: SemEval, as quantify-compare)")
    parser.add_argument("--bags", type=int, default=20, help="bags per negative share and bag size")
    parser.add_argument("--out", default="results/quantification_quapy.md")
    args = parser.parse_args()
    if args.probs:
        with np.load(args.probs) as z:
            probs, labels = z["probs"], z["labels"]
    else:
        probs, labels = crossval.general_text_oof(resolve_data_dir() / "semeval2017_4a" / "train.jsonl")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    tr, te = order[: len(order) // 2], order[len(order) // 2:]
    stats = quantify.quantification_stats(probs[tr], labels[tr])
    by_class = [te[labels[te] == c] for c in range(quantify.K)]
    diffs: dict[str, list[float]] = {m: [] for m in quantify.METHODS}
    for negative in (0.05, 0.16, 0.3, 0.5, 0.7, 0.9):
        counts = quantify._bag_counts(1000, negative, 0.5)
        for _ in range(args.bags):
            rows = np.concatenate([rng.choice(by_class[c], counts[c]) for c in range(quantify.K)])
            for m in quantify.METHODS:
                ours = quantify.estimate(probs[rows], m, stats)
                theirs = quapy_estimate(m, probs[rows], probs[tr], labels[tr])
                diffs[m].append(float(np.abs(ours - theirs).max()))
    import quapy

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# mmsa.quantify against QuaPy", "",
             f"Made by `PYTHONPATH=/tmp/qpx .venv/bin/python benchmarks/quapy_agreement.py` at commit {commit}, QuaPy "
             f"{quapy.__version__}. {len(diffs['cc'])} bags of 1,000 posts (negative shares 5% to 90%) drawn from half "
             f"of {'`' + args.probs + '`' if args.probs else 'the SemEval tweets (calibrated out-of-fold probabilities)'}; "
             "the statistics from the other half. Difference = the largest |mmsa − QuaPy| over the three shares, "
             "in points. sld_bcts: QuaPy's EM on the probabilities as mmsa recalibrates them.", "", "| method | mean difference | largest difference |", "|---|---|---|"]
    lines += [f"| {m} | {100 * np.mean(d):.4f} | {100 * np.max(d):.4f} |" for m, d in diffs.items()]
    files.write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
