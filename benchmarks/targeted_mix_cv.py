"""Does the target head's training mix, or an ensemble of its seeds, lift Dong 2014 (issue 33)?

SemEval-2016 4C is two thirds of the targeted rows (30,526 of 45,813), so the shipped head (`top4`) learns mostly
from it. One fold of `mmsa compare-targets`' grouped 3-fold split (seed 0), side by side: the shipped recipe
(`mmsa.targeted.fit_target_head` over the encoder's top four blocks, the rows and the made-up pairs of the training
folds) with its 4C rows kept at random at KEEP (a draw seeded by the head's seed), for each head seed; then the
mean of the probabilities of each pair of heads. Scores are on every held-out row of the fold, as
results/targeted.md scores them. Token states come from `mmsa compare-targets`' feature cache (made on first use).

    .venv/bin/python benchmarks/targeted_mix_cv.py --keep 1 0.33 --seeds 0 1   # 4 heads in turn, about 1 h 45 min
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from mmsa import targeted, train
from mmsa.data import TARGETED, resolve_data_dir
from mmsa.evaluate import classification_metrics
from mmsa.model import load_model


def fit_fold(model, ds, pairs, both, fold: np.ndarray, fold_n: int, keep: float, seed: int) -> np.ndarray:
    """Held-out probabilities of one head fitted with 4C kept at `keep` (`both`: join(ds, pairs))."""
    tr, te = np.flatnonzero(fold != fold_n), np.flatnonzero(fold == fold_n)
    if keep < 1:
        is4c = ds.source[tr] == "semeval2016_4c"
        tr = tr[~is4c | (np.random.default_rng(100 + seed).random(len(tr)) < keep)]
    head = targeted.fit_target_head(both, np.concatenate([tr, targeted.pair_rows(ds, pairs, fold, fold_n)]),
                                    model.text_encoder.layers()[-4:], seed=seed, progress=False,
                                    position_bias=model.text_encoder.position_bias())
    return targeted.predict_targets(head, both, te)


def cells(p: np.ndarray, label: np.ndarray, source: np.ndarray) -> str:
    out = []
    for name in (*targeted.TARGETED_SETS, None):
        rows = source == name if name else slice(None)
        m = classification_metrics(label[rows], p[rows].argmax(1))
        out.append(f"{100 * m['accuracy']:.1f} / {100 * m['macro_recall']:.1f}")
    return " | ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.33], help="shares of the 4C training rows kept")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    train.set_threads(1)
    model = load_model("default")
    data = resolve_data_dir() / TARGETED
    ds, pairs = targeted.candidate_sets(model, data, "top4", 0)
    fold = targeted.group_folds(ds, 3, 0)  # as `mmsa compare-targets` splits (the same rows and texts at every layer)
    both = targeted.join(ds, pairs)
    probs = {f"4C kept {keep:g}, seed {seed}": fit_fold(model, ds, pairs, both, fold, args.fold, keep, seed)
             for keep, seed in itertools.product(args.keep, args.seeds)}
    held = fold == args.fold
    label, source = ds.label[held], ds.source[held]
    for a, b in itertools.combinations(list(probs), 2):
        probs[f"mean of ({a}) and ({b})"] = (probs[a] + probs[b]) / 2
    print("| heads | " + " | ".join(f"{s} acc / macro recall" for s in targeted.TARGETED_SETS) + " | all |")
    print("|---|" + "---|" * (len(targeted.TARGETED_SETS) + 1))
    for name, p in probs.items():
        print(f"| {name} | {cells(p, label, source)} |")


if __name__ == "__main__":
    main()
