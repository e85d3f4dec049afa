"""Metrics on a labelled JSONL and their printout (`mmsa evaluate`).

Accuracy alone flatters a model on MVSA (59.6% by always answering positive), so weighted and
macro F1/precision/recall, per-class recall and the confusion matrix are always reported; a few
hundred posts cannot tell models a point apart, so each headline metric carries a bootstrap 95%
interval, and the probabilities' expected calibration error is reported beside the labels.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mmsa.schema import LABELS


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, ...]:
    """(support, true positives, precision, recall, F1) per class of one confusion matrix or a stack (..., k, k);
    a class never predicted or never present scores 0, not NaN."""
    cm = np.asarray(cm, dtype=float)
    support, predicted, tp = cm.sum(-1), cm.sum(-2), np.diagonal(cm, axis1=-2, axis2=-1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return support, tp, precision, recall, f1


def _macro(values: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """The mean of per-class `values` over the classes a confusion matrix (or each of a stack) has, as labels
    or as predictions (as scikit-learn averages): a class a file lacks is no 0 pulling the mean down."""
    cm = np.asarray(cm, dtype=float)
    present = (cm.sum(-1) + cm.sum(-2)) > 0
    return (values * present).sum(-1) / np.maximum(present.sum(-1), 1)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Rows of `confusion` are true labels, columns predicted, in LABELS order."""
    k = len(LABELS)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    support, tp, precision, recall, f1 = _per_class(cm)
    n = int(cm.sum())
    w = support / max(n, 1)
    return {
        "n": n,
        "accuracy": float(tp.sum() / max(n, 1)),
        "weighted_f1": float((f1 * w).sum()),
        "macro_f1": float(_macro(f1, cm)),
        "weighted_precision": float((precision * w).sum()),
        "macro_precision": float(_macro(precision, cm)),
        "weighted_recall": float((recall * w).sum()),
        "macro_recall": float(_macro(recall, cm)),
        "per_class_recall": {lab: float(r) for lab, r in zip(LABELS, recall)},
        "per_class_f1": {lab: float(v) for lab, v in zip(LABELS, f1)},
        "support": {lab: int(s) for lab, s in zip(LABELS, support)},
        "confusion": cm.tolist(),
    }


CI_METRICS = ("accuracy", "weighted_f1", "macro_f1", "macro_recall")


def _metrics_from_confusions(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Headline metrics of a stack of confusion matrices (..., k, k), vectorised for the bootstrap."""
    support, tp, _, recall, f1 = _per_class(cm)
    n = support.sum(-1, keepdims=True)
    out = {
        "accuracy": tp.sum(-1) / n[..., 0],
        "weighted_f1": (f1 * support / n).sum(-1),
        "macro_f1": _macro(f1, cm),
        "macro_recall": _macro(recall, cm),
    }
    out.update({f"recall_{lab}": recall[..., i] for i, lab in enumerate(LABELS)})
    return out


def bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Percentile 95% intervals of the headline metrics and per-class recalls over posts resampled
    with replacement (seeded, so a rerun prints the same interval)."""
    k = len(LABELS)
    codes = np.asarray(y_true) * k + np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    cms = np.zeros((n_boot, k * k))
    for s in range(0, n_boot, 100):  # bounded memory on large sets
        draw = codes[rng.integers(0, len(codes), size=(min(100, n_boot - s), len(codes)))]
        cms[s : s + len(draw)] = np.stack([np.bincount(row, minlength=k * k) for row in draw])
    metrics = _metrics_from_confusions(cms.reshape(n_boot, k, k))
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for name, v in metrics.items()}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the gap between confidence and accuracy, averaged over equal-width confidence
    bins weighted by their share of rows."""
    probs, y_true = np.asarray(probs, dtype=float), np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    conf, correct = probs.max(1), (probs.argmax(1) == y_true).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    gaps = [abs(conf[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps))


def evaluate_file(path: str | Path, model="default", batch_size: int = 32, backend: str | None = None) -> dict:
    """Score every row of a labelled JSONL with `model` (a SentimentModel or a name/folder).

    Rows without `image` are scored from text alone. Returns fused metrics plus the text-only and
    image-only branches on the same rows (image: rows that have one). Rows with a `target` are scored toward
    it, as `mmsa score` scores each brand a post names (`toward_target`: whether the model has a target head, its own or borrowed;
    without one, or where the text does not contain the target, the post's own label stands: `targets_not_found`
    counts those rows). A row whose image does not decode, or whose image URL gives none, is scored on its text
    (`images_unreadable`); a row with neither text nor image is left out (`nothing_to_read`). Rows in languages
    the model does not cover are scored too, and counted by language (`languages_not_covered`): `mmsa score`
    would leave them unlabelled.
    """
    from mmsa.data import load_jsonl
    from mmsa.infer import get_engine
    from mmsa.model import load_model

    m = load_model(model) if isinstance(model, (str, Path)) else model
    engine = get_engine(m, backend)  # the same inference path as scoring
    ds = load_jsonl(path, evaluation=True)
    if not len(ds):
        raise ValueError(f"{path}: no labelled rows" + (f" with text or an image ({ds.left_out} without)" if ds.left_out else ""))
    seconds = 0.0  # model time only: image decoding is the fetch stage's cost, not the model's
    preds, unreadable = [], 0
    for s in range(0, len(ds), 256):  # bounded memory for decoded images
        texts = ds.texts[s : s + 256]
        imgs = [_image(p, m.image_size) if p else None for p in ds.images[s : s + 256]]
        unreadable += sum(p is not None and i is None for p, i in zip(ds.images[s : s + 256], imgs))
        targets = None if ds.targets is None else [[sp] if sp else [] for sp in ds.targets[s : s + 256]]
        start = time.perf_counter()
        preds.append(engine.predict(texts, imgs, batch_size=batch_size, targets=targets))
        seconds += time.perf_counter() - start
    probs = np.concatenate([p.probs for p in preds])
    toward = ds.targets is not None and m.target_model is not None
    if toward:
        target = [t for p in preds for t in p.target_probs]  # read from the text, as `mmsa score` reads a brand's
        probs = np.stack([t[0] if len(t) else f for f, t in zip(probs, target)])
    text_probs = np.concatenate([p.text_probs for p in preds])
    image_probs = np.concatenate([p.image_probs for p in preds])
    has = ~np.isnan(image_probs).any(1)
    out = _scored(ds.labels, probs)
    out.update(
        model=m.version,
        data=str(path),
        n_with_image=int(has.sum()),
        images_unreadable=unreadable,
        toward_target=toward,
        targets_not_found=0 if ds.targets is None else sum(t is not None and not t for t in ds.targets),
        nothing_to_read=ds.left_out,
        languages_not_covered=_not_covered(ds.texts, m.languages),
        ms_per_post=1000 * seconds / max(len(ds), 1),
        batch_size=batch_size,
        text_only=_brief(_scored(ds.labels, text_probs)),
        image_only=_brief(_scored(ds.labels[has], image_probs[has])) if has.any() else None,
    )
    return out


def _not_covered(texts: list[str], covered: frozenset[str]) -> dict[str, int]:
    """Rows by language, of the languages the model does not cover: scored here, as asked, while `mmsa score`
    leaves such posts unlabelled."""
    from mmsa import language

    found = Counter(language.identify(t) for t in texts)
    return {lang: n for lang, n in found.most_common() if lang is not None and lang not in covered}


def _image(path: Path | str, size: int) -> np.ndarray | None:
    """A row's image, or None when its file does not decode or its URL gives no picture (scored on its text, as
    `mmsa score` scores a post whose image is broken or gone); a missing file stays an error: a wrong folder would
    turn every image into text."""
    import requests

    from mmsa.data import load_image
    from mmsa.images.decode import MAX_PIXELS, ImageError, preprocess

    try:
        if isinstance(path, str):  # an http(s) URL
            answer = requests.get(path, timeout=30)
            answer.raise_for_status()
            return preprocess(answer.content, size, max_pixels=MAX_PIXELS)
        return load_image(path, size)
    except FileNotFoundError:
        raise
    except (ImageError, OSError):  # requests' errors are OSErrors too
        return None


def _scored(y_true: np.ndarray, probs: np.ndarray) -> dict:
    m = classification_metrics(y_true, probs.argmax(1))
    m["ci95"] = bootstrap_intervals(y_true, probs.argmax(1))
    m["ece"] = expected_calibration_error(probs, y_true)
    return m


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1", "macro_recall", "per_class_recall", "ci95", "ece")}


def _with_ci(m: dict, name: str) -> str:
    lo, hi = m["ci95"][name]
    return f"{name}={m[name]:.4f} [{lo:.3f}, {hi:.3f}]"


def format_metrics(m: dict) -> str:
    lines = [
        f"model {m.get('model', '?')}  data {m.get('data', '?')}"
        + ("  (toward each row's target)" if m.get("toward_target") else "")
        + (f"  ({m['targets_not_found']} targets not in their text: the post's label)" if m.get("targets_not_found")
           else "")
        + (f"  ({m['images_unreadable']} images that do not decode or came from no URL: text alone)"
           if m.get("images_unreadable") else "")
        + (f"  ({m['nothing_to_read']} rows with neither text nor image: left out)" if m.get("nothing_to_read") else "")
        + (f"  ({sum(m['languages_not_covered'].values())} rows in languages the model does not cover, "
           f"{', '.join(f'{k} {v}' for k, v in m['languages_not_covered'].items())}: scored here, left unlabelled "
           "by mmsa score)" if m.get("languages_not_covered") else ""),
        f"n={m['n']}  " + "  ".join(_with_ci(m, k) for k in CI_METRICS) + "  (bootstrap 95% intervals)",
        f"precision weighted={m['weighted_precision']:.4f} macro={m['macro_precision']:.4f}  "
        f"recall weighted={m['weighted_recall']:.4f} macro={m['macro_recall']:.4f}",
        "per-class recall: " + "  ".join(f"{k}={v:.4f}" for k, v in m["per_class_recall"].items()),
        f"expected calibration error: {m['ece']:.4f}",
        "confusion (rows true, cols predicted: " + ", ".join(LABELS) + ")",
        *("  " + f"{lab:>9s} " + " ".join(f"{c:5d}" for c in row) for lab, row in zip(LABELS, m["confusion"])),
    ]
    for branch in ("text_only", "image_only"):
        b = m.get(branch)
        if b:
            lines.append(f"{branch}: n={b['n']}  " + "  ".join(_with_ci(b, k) for k in CI_METRICS)
                         + f"  ece={b['ece']:.4f}")
    if "ms_per_post" in m:
        lines.append(f"{m['ms_per_post']:.1f} ms/post model time (batch size {m['batch_size']}, decoding excluded)")
    return "\n".join(lines)


def to_json(m: dict) -> str:
    return json.dumps(m, indent=2)
