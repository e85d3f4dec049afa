"""Metrics on a labelled JSONL and their printout (`mmsa evaluate`).

Accuracy alone flatters a model on MVSA (59.6% by always answering positive), so weighted and
macro F1/precision/recall, per-class recall and the confusion matrix are always reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mmsa.schema import LABELS


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Rows of `confusion` are true labels, columns predicted, in LABELS order."""
    k = len(LABELS)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    n = int(cm.sum())
    w = support / max(n, 1)
    return {
        "n": n,
        "accuracy": float(tp.sum() / max(n, 1)),
        "weighted_f1": float((f1 * w).sum()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float((precision * w).sum()),
        "macro_precision": float(precision.mean()),
        "weighted_recall": float((recall * w).sum()),
        "macro_recall": float(recall.mean()),
        "per_class_recall": {lab: float(r) for lab, r in zip(LABELS, recall)},
        "per_class_f1": {lab: float(v) for lab, v in zip(LABELS, f1)},
        "support": {lab: int(s) for lab, s in zip(LABELS, support)},
        "confusion": cm.tolist(),
    }


def evaluate_file(path: str | Path, model="default", batch_size: int = 32, backend: str | None = None) -> dict:
    """Score every row of a labelled JSONL with `model` (a SentimentModel or a name/folder).

    Rows without `image` are scored from text alone. Returns fused metrics plus the text-only and
    image-only branches on the same rows (image: rows that have one).
    """
    from mmsa.data import load_image, load_jsonl
    from mmsa.infer import get_engine
    from mmsa.model import load_model

    m = load_model(model) if isinstance(model, (str, Path)) else model
    engine = get_engine(m, backend)  # the same inference path as scoring
    ds = load_jsonl(path)
    seconds = 0.0  # model time only: image decoding is the fetch stage's cost, not the model's
    preds = []
    for s in range(0, len(ds), 256):  # bounded memory for decoded images
        texts = ds.texts[s : s + 256]
        imgs = [load_image(p, m.image_size) if p else None for p in ds.images[s : s + 256]]
        start = time.perf_counter()
        preds.append(engine.predict(texts, imgs, batch_size=batch_size))
        seconds += time.perf_counter() - start
    probs = np.concatenate([p.probs for p in preds])
    text_probs = np.concatenate([p.text_probs for p in preds])
    image_probs = np.concatenate([p.image_probs for p in preds])
    has = ~np.isnan(image_probs).any(1)
    out = classification_metrics(ds.labels, probs.argmax(1))
    out.update(
        model=m.version,
        data=str(path),
        n_with_image=int(has.sum()),
        ms_per_post=1000 * seconds / max(len(ds), 1),
        batch_size=batch_size,
        text_only=_brief(classification_metrics(ds.labels, text_probs.argmax(1))),
        image_only=_brief(classification_metrics(ds.labels[has], image_probs[has].argmax(1))) if has.any() else None,
    )
    return out


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1", "macro_recall")}


def format_metrics(m: dict) -> str:
    lines = [
        f"model {m.get('model', '?')}  data {m.get('data', '?')}",
        f"n={m['n']}  accuracy={m['accuracy']:.4f}  weighted_f1={m['weighted_f1']:.4f}  "
        f"macro_f1={m['macro_f1']:.4f}  macro_recall={m['macro_recall']:.4f}",
        f"precision weighted={m['weighted_precision']:.4f} macro={m['macro_precision']:.4f}  "
        f"recall weighted={m['weighted_recall']:.4f} macro={m['macro_recall']:.4f}",
        "per-class recall: " + "  ".join(f"{k}={v:.4f}" for k, v in m["per_class_recall"].items()),
        "confusion (rows true, cols predicted: " + ", ".join(LABELS) + ")",
        *("  " + f"{lab:>9s} " + " ".join(f"{c:5d}" for c in row) for lab, row in zip(LABELS, m["confusion"])),
    ]
    for branch in ("text_only", "image_only"):
        b = m.get(branch)
        if b:
            lines.append(
                f"{branch}: n={b['n']} accuracy={b['accuracy']:.4f} weighted_f1={b['weighted_f1']:.4f} "
                f"macro_f1={b['macro_f1']:.4f}"
            )
    if "ms_per_post" in m:
        lines.append(f"{m['ms_per_post']:.1f} ms/post model time (batch size {m['batch_size']}, decoding excluded)")
    return "\n".join(lines)


def to_json(m: dict) -> str:
    return json.dumps(m, indent=2)
