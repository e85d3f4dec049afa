"""`mmsa compare`: the selection protocol, repeated stratified k-fold cross-validation over MVSA train+dev.

450 dev posts have a standard error of about two points, so no choice is made on them: train and dev
are pooled (4,061 posts) and split into k stratified folds, r times over. Every tuned choice (each head's
strength, the stacking weights, temperatures) is made inside the training folds; the held-out fold
only scores. The candidates are a fixed list, written below before any was run. Differences are paired
per fold against text-only, with the Nadeau-Bengio corrected standard error (folds of repeated CV
share training rows, so the naive one is too small). The imageless path is judged separately, on the
fixed held-out tenth of the SemEval tweets that no part of the model trained on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from mmsa import files, stack
from mmsa.evaluate import classification_metrics, expected_calibration_error
from mmsa.features import PooledSet, pooled_features
from mmsa.schema import LABELS

# The fixed candidate list: name -> what it is (the order of the table).
CANDIDATES = {
    "text": "text only: logistic regression on the text vector, post labels",
    "image": "image only: logistic regression on the image vector, post labels",
    "general_text": "the imageless path's head (SemEval tweets only), no MVSA training",
    "early": "early fusion: logistic regression on [text; image]",
    "rule": "text-label head x image-label head, combined by MVSA's labelling rule",
    "stack2": "stacking over out-of-fold [text, image] post heads",
    "stack4": "stacking over out-of-fold [text, image] post heads + image-label head + general text head",
    "mlp": "mmsa-default-3's head: native_combine MLP (1 member, early-stopped on an inner fold)",
}
METRICS = ("accuracy", "weighted_f1", "macro_f1")
SEMEVAL_WEIGHTS = ("none", "sqrt", "balanced")


def repeated_folds(y: np.ndarray, k: int, repeats: int, seed: int = 0):
    from sklearn.model_selection import RepeatedStratifiedKFold

    return list(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed).split(np.zeros(len(y)), y))


def semeval_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (train, held-out) split the text encoder's fine-tuning also used (its held-out tenth
    never trained anything)."""
    from mmsa.train import holdout_split

    return holdout_split(n)


def general_head(sem: PooledSet, tr: np.ndarray, weight: str, extra: tuple[np.ndarray, np.ndarray] | None = None):
    """The imageless path's text head on SemEval rows `tr` (+ `extra` (vectors, labels) rows)."""
    x, y = sem.text[tr], sem.label[tr]
    if extra is not None:
        x, y = np.concatenate([x, extra[0]]), np.concatenate([y, extra[1]])
    return stack.fit_lr(x, y, weight=weight), x, y


def _mlp(mv: PooledSet, tr: np.ndarray, te: np.ndarray, seed: int, text_enc) -> np.ndarray:
    """mmsa-default-3's head (native_combine) trained as `mmsa train` trains one member."""
    from mmsa.train import Trainer, TrainConfig, fold_ids, predict_logits

    cfg = TrainConfig(head="native_combine", seed=seed)

    def feats(rows):
        return ({"t_pooled": torch.from_numpy(mv.text[rows]), "t_mask": torch.ones(len(rows), 1, dtype=torch.bool)},
                {"i_pooled": torch.from_numpy(mv.image[rows]), "has_image": torch.from_numpy(mv.has_image[rows])})

    inner = fold_ids(mv.label[tr], cfg.folds, seed)
    fit_rows, stop_rows = tr[inner != 0], tr[inner == 0]
    (ft, fi), (st, si) = feats(fit_rows), feats(stop_rows)

    trainer = Trainer(cfg, text_enc, mv.image.shape[1], ft, st, fi, si, mv.label[fit_rows], mv.label[stop_rows])
    torch.manual_seed(seed)
    trainer.fit(progress=False)
    tt, ti = feats(te)
    return predict_logits(trainer.bundle, None, False, tt, ti)["fused"].softmax(-1).numpy()


def run_fold(mv: PooledSet, g_probs: np.ndarray, g_head, tr: np.ndarray, te: np.ndarray, seed: int, text_enc) -> dict:
    """Every candidate fitted on `tr`, scored on `te`: name -> (raw probabilities, calibrated probabilities).
    The branch heads are fitted once and shared by the candidates built from them."""
    y, t, i = mv.label, mv.text, mv.image
    heads = {"text_post": stack.branch(t[tr], y[tr], seed), "image_post": stack.branch(i[tr], y[tr], seed),
             "image_label": stack.branch(i[tr], mv.image_label[tr], seed)}
    out = {}
    for name, x in (("text", t), ("image", i)):
        head, oof = heads[f"{name}_post"]
        raw = head.predict_proba(x[te])
        out[name] = (raw, stack.tempered(raw, stack.fit_temperature(oof, y[tr])))
    out["general_text"] = (g_probs[te], g_probs[te])
    ti = np.concatenate([t, i], 1)
    raw = stack.fit_lr(ti[tr], y[tr], seed=seed).predict_proba(ti[te])
    out["early"] = (raw, raw)
    text_label = stack.fit_lr(t[tr], mv.text_label[tr], seed=seed)
    raw = stack.rule_combine(text_label.predict_proba(t[te]), heads["image_label"][0].predict_proba(i[te]))
    out["rule"] = (raw, raw)
    heads["text_general"] = (g_head, g_probs[tr])
    for name, names in stack.RECIPES.items():
        fit, _ = stack.fit_stack({n: heads[n] for n in names}, y[tr], seed)
        raw = fit.meta.predict_proba(fit.branch_logp(t[te], i[te], {"text_general": g_probs[te]}))
        out[name] = (raw, stack.tempered(raw, fit.t_fused))
    raw = _mlp(mv, tr, te, seed, text_enc)
    out["mlp"] = (raw, raw)
    return out


def _fmt(xs) -> str:
    return f"{100 * np.mean(xs):.2f} ± {100 * np.std(xs, ddof=1):.2f}"


def corrected_se(diffs: np.ndarray, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio's standard error of a mean over resampled folds: var * (1/J + n_test/n_train)."""
    return float(np.sqrt(np.var(diffs, ddof=1) * (1 / len(diffs) + n_test / n_train)))


def compare(mvsa_dir: str | Path, semeval: str | Path, out: str | Path | None, model="default", k: int = 5,
            repeats: int = 3, seed: int = 0, cache_dir=None, progress: bool = True, others=()) -> dict:
    """Run the protocol; write the markdown table to `out` (+ the per-fold numbers as JSON beside it). `others`:
    more model folders (the large tier) through the same folds, their rows named "<model name> <candidate>"."""
    from mmsa.model import load_model

    models = [load_model(x) if isinstance(x, (str, Path)) else x for x in (model, *others)]
    kw = {} if cache_dir is None else {"cache_dir": cache_dir}
    started = time.perf_counter()
    per_model = [_protocol(m, mvsa_dir, semeval, k, repeats, seed, kw, progress) for m in models]
    first = per_model[0]
    folds = [dict(rows) for rows in first["folds"]]
    for m, res in zip(models[1:], per_model[1:]):
        for row, theirs in zip(folds, res["folds"]):
            row.update({f"{m.config['name']} {c}": v for c, v in theirs.items()})
    result = {
        "k": k, "repeats": repeats, "n": first["n"], "seed": seed, "model_encoders": models[0].version,
        "seconds": time.perf_counter() - started, **{x: first[x] for x in ("semeval_weight", "n_semeval_train",
                                                                             "n_semeval_heldout", "semeval")},
        "folds": folds,
        "others": {m.config["name"]: {"model_encoders": m.version, "semeval_weight": r["semeval_weight"], "semeval": r["semeval"]}
                   for m, r in zip(models[1:], per_model[1:])},
    }
    if out is not None:
        out = Path(out)
        files.write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
        files.write_text(out, table(result))
    return result


def _protocol(m, mvsa_dir, semeval, k: int, repeats: int, seed: int, kw: dict, progress: bool) -> dict:
    """One model's part of `compare`: the imageless path's weighting on SemEval, then every candidate per fold."""
    mv = stack.pooled_pool(m, mvsa_dir, **kw)
    sem = pooled_features(m, semeval, with_images=False, **kw)

    # The imageless path: its class weighting chosen by the out-of-fold recall of its worst class on the SemEval
    # training part (macro recall as the tie-break): the failure to avoid is one class collapsing.
    sem_tr, sem_ho = semeval_split(len(sem))
    semeval_rows = {}
    for w in SEMEVAL_WEIGHTS:
        head, _, _ = general_head(sem, sem_tr, w)
        oof = stack.out_of_fold(head, sem.text[sem_tr], sem.label[sem_tr], folds=3, seed=seed)
        raw = head.predict_proba(sem.text[sem_ho])
        temp = stack.fit_temperature(oof, sem.label[sem_tr])
        semeval_rows[w] = {
            "oof": classification_metrics(sem.label[sem_tr], oof.argmax(1)),
            "heldout": classification_metrics(sem.label[sem_ho], raw.argmax(1)),
            "C": stack.chosen_c(head[-1]), "temperature": temp,
            "ece_raw": expected_calibration_error(raw, sem.label[sem_ho]),
            "ece_calibrated": expected_calibration_error(stack.tempered(raw, temp), sem.label[sem_ho]),
            "head": head,
        }
    weight = max(SEMEVAL_WEIGHTS, key=lambda w: (round(min(semeval_rows[w]["oof"]["per_class_recall"].values()), 3),
                                                   semeval_rows[w]["oof"]["macro_recall"]))
    g_head = semeval_rows[weight]["head"]
    g_probs = g_head.predict_proba(mv.text)

    per_fold = []
    for n, (tr, te) in enumerate(repeated_folds(mv.label, k, repeats, seed)):
        t0 = time.perf_counter()
        res = run_fold(mv, g_probs, g_head, tr, te, seed, m.text_encoder)
        row = {}
        for name, (raw, cal) in res.items():
            met = classification_metrics(mv.label[te], cal.argmax(1))
            row[name] = {**{x: met[x] for x in METRICS},
                         "ece_raw": expected_calibration_error(raw, mv.label[te]),
                         "ece_calibrated": expected_calibration_error(cal, mv.label[te])}
        per_fold.append(row)
        if progress:
            print(f"{m.config['name']} fold {n + 1}/{k * repeats} {time.perf_counter() - t0:.0f}s  "
                  + "  ".join(f"{c}={row[c]['accuracy']:.3f}" for c in row), flush=True)
    return {"n": len(mv), "folds": per_fold, "semeval_weight": weight, "n_semeval_train": len(sem_tr),
            "n_semeval_heldout": len(sem_ho), "semeval": {w: {x: v for x, v in r.items() if x != "head"}
                                                          for w, r in semeval_rows.items()}}


def best_fusion(result: dict) -> tuple[str, float, float]:
    """The fusion candidate with the best mean accuracy, its paired gain over text-only and that gain's SE."""
    folds, n = result["folds"], result["n"]
    n_te = n / result["k"]
    fusions = [c for c in CANDIDATES if c not in ("text", "image", "general_text")]
    best = max(fusions, key=lambda c: np.mean([f[c]["accuracy"] for f in folds]))
    d = np.array([f[best]["accuracy"] - f["text"]["accuracy"] for f in folds])
    return best, float(d.mean()), corrected_se(d, n - n_te, n_te)


def table(result: dict) -> str:
    folds, n, k, r = result["folds"], result["n"], result["k"], result["repeats"]
    n_te = n / k
    best, gain, se = best_fusion(result)
    shipped = best if gain > se else "text"
    lines = [
        f"# Model selection: {k}-fold stratified cross-validation x {r} repeats over MVSA-Single train+dev (n={n})",
        "",
        f"Produced by `mmsa compare` ({result['seconds'] / 60:.0f} min on 2 CPU cores); encoders of "
        f"`{result['model_encoders']}` (frozen; pooled vectors)"
        + "".join(f"; rows named `{tag} …`: the same candidates over the encoders of `{o['model_encoders']}`"
                  for tag, o in result.get("others", {}).items())
        + ". Every tuned choice is made inside the training "
        "folds; the held-out fold only scores. Mean ± sd over the folds. The paired difference is per fold "
        "against text-only, with the Nadeau-Bengio corrected standard error. Fusion ships only when its gain "
        "is larger than one standard error.",
        "",
        "Caveat: cross-validated figures do not carry over one for one to MVSA-Single's test split, which "
        "was measured to be about four points harder than this pool; compare candidates with each other.",
        "",
        "| candidate | what | accuracy | weighted F1 | macro F1 | accuracy − text (± SE) | ECE % raw | ECE % calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    others = result.get("others", {})
    rows = [*CANDIDATES.items(), *((f"{tag} {c}", what) for tag in others for c, what in CANDIDATES.items())]
    for c, what in rows:
        if c not in folds[0]:
            continue
        d = np.array([f[c]["accuracy"] - f["text"]["accuracy"] for f in folds])
        diff = "—" if c == "text" else f"{100 * d.mean():+.2f} ± {100 * corrected_se(d, n - n_te, n_te):.2f}"
        name = f"**{c}** (shipped)" if c == shipped else c
        lines.append(f"| {name} | {what} | " + " | ".join(_fmt([f[c][x] for f in folds]) for x in METRICS)
                     + f" | {diff} | {_fmt([f[c]['ece_raw'] for f in folds])} | {_fmt([f[c]['ece_calibrated'] for f in folds])} |")
    lines += ["", f"Best fusion: `{best}`, {100 * gain:+.2f} ± {100 * se:.2f} points of accuracy over text-only: "
              + ("larger than one standard error, so it ships." if gain > se else "not larger than one standard error: the image's weight is zero.")]
    for tag, part in [("", result), *((f" ({tag})", o) for tag, o in others.items())]:
        lines += [
            "",
            f"## The imageless path on SemEval-2017 tweets{tag} (fixed held-out tenth, n={result['n_semeval_heldout']})",
            "",
            f"A logistic regression on the text vector trained on the other {result['n_semeval_train']:,} tweets; "
            "its class weighting is chosen by the out-of-fold recall of its worst class on those, macro recall breaking "
            "ties (the shipped head adds MVSA's text labels). The text encoder's top layers were fine-tuned on those "
            "same tweets, so out-of-fold figures there are optimistic; the held-out tenth saw no training at all.",
            "",
            "| class weighting | OOF worst-class recall (train part) | OOF macro recall | held-out macro recall | positive | neutral | negative | accuracy | ECE % raw | ECE % calibrated |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for w, s in part["semeval"].items():
            h = s["heldout"]
            pr = h["per_class_recall"]
            name = f"**{w}** (shipped)" if w == part["semeval_weight"] else w
            lines.append(f"| {name} | {100 * min(s['oof']['per_class_recall'].values()):.2f} | "
                         f"{100 * s['oof']['macro_recall']:.2f} | {100 * h['macro_recall']:.2f} | "
                         + " | ".join(f"{100 * pr[lab]:.1f}" for lab in LABELS)
                         + f" | {100 * h['accuracy']:.2f} | {100 * s['ece_raw']:.2f} | {100 * s['ece_calibrated']:.2f} |")
    return "\n".join(lines) + "\n"


def general_text_oof(semeval: str | Path, model="default", seed: int = 0, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped recipe's general text head (class weighting stack.DEFAULT_WEIGHT) on SemEval: calibrated
    out-of-fold probabilities for every tweet (the temperature fitted on them) and the labels."""
    from mmsa.model import load_model

    m = load_model(model) if isinstance(model, (str, Path)) else model
    sem = pooled_features(m, semeval, with_images=False, **({} if cache_dir is None else {"cache_dir": cache_dir}))
    head = stack.fit_lr(sem.text, sem.label, weight=stack.DEFAULT_WEIGHT, seed=seed)
    oof = stack.out_of_fold(head, sem.text, sem.label, seed=seed)
    return stack.tempered(oof, stack.fit_temperature(oof, sem.label)), sem.label


def quantification_compare(probs: np.ndarray, labels: np.ndarray, out: str | Path | None, source: str, command: str,
                           **protocol) -> dict:
    """The artificial-prevalence protocol (mmsa.quantify.app_table) over (probs, labels); writes its tables to
    `out` (markdown, the numbers as JSON beside it). `source` says where the probabilities came from."""
    from mmsa import quantify

    started = time.perf_counter()
    result = quantify.app_table(probs, labels, **protocol)
    result |= {"source": source, "command": command, "seconds": time.perf_counter() - started}
    if out is not None:
        out = Path(out)
        files.write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
        files.write_text(out, quantification_table(result))
    return result


def quantification_table(result: dict) -> str:
    """results/quantification.md: share error by method x negative share and x bag size, and the coverage."""
    cells, methods = result["cells"], result["methods"]
    shares = sorted({c["negative_share"] for c in cells})
    sizes = sorted({c["bag_size"] for c in cells})

    def mean(method: str, key: str, **where) -> float:
        return 100 * float(np.mean([c[key] for c in cells if c["method"] == method
                                    and all(c[k] == v for k, v in where.items())]))

    best = result["best"]
    prior = ", ".join(f"{lab} {100 * p:.0f}%" for lab, p in zip(LABELS, result["prior"]))
    lines = [
        "# Quantification: the artificial-prevalence protocol",
        "",
        f"Made by `{result['command']}` ({result['seconds'] / 60:.0f} min on 2 CPU cores). Probabilities: "
        f"{result['source']} (n={result['n']:,}; {prior}).",
        "",
        f"The posts are split into {result['folds']} stratified folds. Each method takes its statistics (training "
        "prior, confusion and mean probability per true class) from the other folds and estimates bags drawn from "
        f"the held-out fold at each negative share x bag size, {result['bags_per_cell']} bags per fold and cell "
        "(the rest split positive : neutral at " + ", ".join(f"{p:.2f}" for p in result["positive_parts"])
        + " positive); a class is drawn with replacement when the fold has fewer of it than the bag needs. "
        "Error: |estimated − true share of the bag| in points; *mean* = over the three classes, *max* = the largest "
        "of the three (what an analyst misreads at worst). Averaged over bags.",
        "",
        "| method | what | mean error | max error | " + " | ".join(f"neg {100 * s:.0f}%" for s in shares)
        + " | " + " | ".join(f"n={n:,}" for n in sizes) + " |",
        "|---|---|---|---|" + "---|" * (len(shares) + len(sizes)),
    ]
    for m, what in methods.items():
        name = f"**{m}** (best)" if m == best else m
        lines.append(f"| {name} | {what} | {mean(m, 'mean_abs_error'):.2f} | {mean(m, 'max_abs_error'):.2f} | "
                     + " | ".join(f"{mean(m, 'max_abs_error', negative_share=s):.1f}" for s in shares) + " | "
                     + " | ".join(f"{mean(m, 'max_abs_error', bag_size=n):.1f}" for n in sizes) + " |")
    lines += ["", "Columns after *max error*: the max error per negative share (all bag sizes), then per bag size "
              "(all shares).", "", "## Max error by negative share and bag size", ""]
    for m in methods:
        lines += [f"**{m}**", "", "| negative share | " + " | ".join(f"n={n:,}" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        lines += [f"| {100 * s:.0f}% | " + " | ".join(f"{mean(m, 'max_abs_error', negative_share=s, bag_size=n):.1f}"
                                                     for n in sizes) + " |" for s in shares]
        lines.append("")
    cov = result["coverage"]
    lines += [f"## 95% bootstrap intervals of `{cov['method']}` ({cov['resamples']} resamples of the bag's posts)", "",
              "Coverage: the share of (bag, class) pairs whose true share lies inside the interval.", "",
              "| bag size | bags | coverage | mean width of the negative share's interval (points) |", "|---|---|---|---|"]
    for n, c in sorted(cov["by_bag_size"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(n):,} | {c['bags']} | {100 * c['coverage']:.1f}% | {100 * c['negative_interval_width']:.1f} |")
    return "\n".join(lines) + "\n"
