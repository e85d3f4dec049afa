"""Sentiment toward a target (a brand): the labelled targeted sets, their token states, the target head's fit
and the cross-validation that chose it (`mmsa compare-targets`).

The target head (`mmsa.heads.TargetHead`) reads the token states that the post's own text pass makes before
the encoder's top blocks, so it learns from those states computed once per distinct text and cached (fp16),
not from the encoder: an epoch over the 46k targeted rows is the head's few blocks' work per row.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmsa.data import LABEL_TO_ID, read_rows, target_spans
from mmsa.encoders import fast_tokenizer, pad_ids, span_token_mask, token_ids, unpadded
from mmsa.evaluate import classification_metrics
from mmsa.features import FEATURES_DIR, encoder_key
from mmsa.files import atomic_path
from mmsa.heads import Feats, TargetHead
from mmsa.stack import fit_lr, fit_temperature, logp, tempered
from mmsa.train import class_weight, length_batches

# The sets of ../shared/data/targeted/ and their files (test splits are kept apart for judging).
TARGETED_SETS = {
    "twitter2015": ("train", "dev"),
    "twitter2017": ("train", "dev"),
    "dong2014": ("train",),
    "semeval2016_4c": ("train", "dev", "devtest", "test2016"),
}
# Each candidate and the encoder's top blocks its head reruns (None: no head, the final states as they are).
CANDIDATES = {"post": None, "span_lr": None, "top1": 1, "top2": 2, "top3": 3, "top4": 4}
CHOSEN = "top4"  # by `mmsa compare-targets` (results/targeted.md): the best of the candidates there
OWN = "top1"  # a borrower's own head, blended with the lent one (results/large/targeted.md)
PAIRS = 10_000  # pair texts made for the head candidates (two rows each)


@dataclass
class TargetedSet:
    """Labelled (text, target) rows over their texts' cached final token states."""

    states: np.ndarray  # (tokens, D) fp16: every distinct text's states, one text after another
    offsets: np.ndarray  # (texts + 1,): where each text's states start
    text: np.ndarray  # (N,) each row's text index: rows of one tweet share it (the CV's groups)
    spans: list[np.ndarray]  # per row, the target's token mask
    label: np.ndarray
    source: np.ndarray  # the set each row came from
    key: str = ""  # changes with the encoder and the rows: names cached out-of-fold probabilities
    parts: np.ndarray | None = None  # (N, 2) for made-up pair rows: the real texts (their `text` indices) joined

    def __len__(self) -> int:
        return len(self.label)

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.offsets[self.text[rows] + 1] - self.offsets[self.text[rows]]

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states (R,L,D) fp32, token mask, target mask) of rows; a target no token covers: the whole text."""
        lens = self.lengths(rows)
        hidden = np.zeros((len(rows), int(lens.max()), self.states.shape[1]), np.float32)
        mask = np.zeros(hidden.shape[:2], bool)
        span = np.zeros(hidden.shape[:2], bool)
        for r, (i, n) in enumerate(zip(rows, lens)):
            a = self.offsets[self.text[i]]
            hidden[r, :n] = self.states[a : a + n]
            mask[r, :n] = True
            span[r, : len(self.spans[i])] = self.spans[i][:n]
        empty = ~span.any(1)
        span[empty] = mask[empty]
        return torch.from_numpy(hidden), torch.from_numpy(mask), torch.from_numpy(span)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """(span mean, post mean) of the states per row: the frozen features of the linear candidates."""
        post = np.stack([self.states[a:b].astype(np.float32).mean(0) for a, b in zip(self.offsets[:-1], self.offsets[1:])])
        span = np.zeros((len(self), self.states.shape[1]), np.float32)
        for r, (t, m) in enumerate(zip(self.text, self.spans)):
            a = self.offsets[t]
            span[r] = self.states[a : a + len(m)][m].astype(np.float32).mean(0) if m.any() else post[t]
        return span, post[self.text]


def _save_array(path: Path, a: np.ndarray) -> None:
    """np.save, atomically: a killed run leaves no half file to load later."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append .npy to a name
        np.save(fh, a)


@torch.inference_mode()
def token_states(model, texts: list[str], layer: int, cache_dir: Path | None = FEATURES_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(states, offsets) of `texts` after the text encoder's `layer` blocks (a `hidden_states` index; its
    block count: the final states), as `TargetedSet` holds them, cached by the encoder's weights and the texts.
    One encoder pass caches the states of every candidate."""
    h = hashlib.sha256(b"states-v2" + encoder_key(model).encode())
    h.update(json.dumps(texts).encode())
    folder = Path(cache_dir) / f"states-{h.hexdigest()[:16]}" if cache_dir else None
    if folder is not None and (folder / f"states-{layer}.npy").exists():
        return np.load(folder / f"states-{layer}.npy", mmap_mode="r"), np.load(folder / "offsets.npy")
    enc = model.text_encoder
    n = len(enc.layers())
    taps = sorted({layer, *(n - (k or 0) for k in CANDIDATES.values())})  # one pass caches every candidate's
    tok = fast_tokenizer(enc.tokenizer)
    pad = unpadded(tok, enc.max_length)
    ids = token_ids(tok, texts)
    lens = np.array([len(x) for x in ids])
    offsets = np.concatenate([[0], np.cumsum(lens)])
    states = {t: np.zeros((int(offsets[-1]), enc.dim), np.float16) for t in taps}
    order = np.argsort(lens, kind="stable")
    for s in tqdm(range(0, len(texts), 128), desc="token states", leave=False):
        idx = order[s : s + 128]
        input_ids, mask = pad_ids([ids[i] for i in idx], pad)
        hidden = enc.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask),
                           output_hidden_states=True).hidden_states
        for t in taps:
            h_t = hidden[t].float().numpy()
            for r, i in enumerate(idx):
                states[t][offsets[i] : offsets[i + 1]] = h_t[r, : lens[i]]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("offsets.npy", offsets), *((f"states-{t}.npy", a) for t, a in states.items())):
            _save_array(folder / name, arr)
    return states[layer], offsets


def read_sets(data_dir: str | Path) -> list[dict]:
    """Every labelled row of TARGETED_SETS under `data_dir` (../shared/data/targeted), with its `source`."""
    rows = []
    for name, splits in TARGETED_SETS.items():
        for split in splits:
            rows += [{**r, "source": name} for r in read_rows(Path(data_dir) / name / f"{split}.jsonl")]
    return rows


def targeted_set(model, data_dir: str | Path, layer: int, cache_dir: Path | None = FEATURES_DIR) -> TargetedSet:
    """Every labelled row of TARGETED_SETS under `data_dir`, over its texts' token states after `layer`."""
    return _over_states(model, read_sets(data_dir), layer, cache_dir)


def _over_states(model, rows: list[dict], layer: int, cache_dir: Path | None,
                 parts: np.ndarray | None = None) -> TargetedSet:
    texts = sorted({r["text"] for r in rows})
    where = {t: i for i, t in enumerate(texts)}
    states, offsets = token_states(model, texts, layer, cache_dir)
    tok = fast_tokenizer(model.text_encoder.tokenizer)
    unpadded(tok, model.max_length)
    spans = span_token_mask(tok, [r["text"] for r in rows], [target_spans(r) for r in rows])
    key = hashlib.sha256((encoder_key(model) + json.dumps([[r["text"], r["target"], r["label"]] for r in rows])).encode())
    return TargetedSet(states, offsets, np.array([where[r["text"]] for r in rows]), spans,
                       np.array([LABEL_TO_ID[r["label"]] for r in rows]), np.array([r["source"] for r in rows]),
                       key.hexdigest()[:16], parts)


def pair_set(model, data_dir: str | Path, ds: TargetedSet, layer: int, n: int = PAIRS, seed: int = 0,
             cache_dir: Path | None = FEATURES_DIR) -> TargetedSet:
    """Made-up rows that teach the head to read the target's own words: two real tweets, each naming its
    target once, joined into one text, with a row toward each target labelled as its own tweet was (few real
    tweets name two targets with different sentiments, so a head learns mostly to copy the post's). Only pairs
    that fit in the encoder's length. `parts` holds the two real texts (`ds.text` indices), so that
    cross-validation trains on a pair only when both of its tweets are in the training folds."""
    rows = read_sets(data_dir)
    texts = sorted({r["text"] for r in rows})
    where = {t: i for i, t in enumerate(texts)}
    single = [r for r, sp in zip(rows, map(target_spans, rows)) if len(sp) == 1]
    lengths = np.diff(ds.offsets)
    rng = np.random.default_rng(seed)
    out, parts = [], []
    while len(out) < 2 * n:
        a, b = (single[i] for i in rng.integers(0, len(single), 2))
        ta, tb = where[a["text"]], where[b["text"]]
        if ta == tb or a["target"].lower() == b["target"].lower() or lengths[ta] + lengths[tb] - 2 > model.max_length:
            continue
        text = a["text"] + " " + b["text"]
        (sa, _), (sb, _) = target_spans(a)[0], target_spans(b)[0]
        out += [{"text": text, "target": a["target"], "target_start": sa, "label": a["label"], "source": "pairs"},
                {"text": text, "target": b["target"], "target_start": len(a["text"]) + 1 + sb, "label": b["label"],
                 "source": "pairs"}]
        parts += [(ta, tb)] * 2
    return _over_states(model, out, layer, cache_dir, np.array(parts))


def join(ds: TargetedSet, more: TargetedSet) -> TargetedSet:
    """One set of ds's rows followed by more's (its texts after ds's)."""
    return TargetedSet(np.concatenate([ds.states, more.states]),
                       np.concatenate([ds.offsets[:-1], more.offsets + ds.offsets[-1]]),
                       np.concatenate([ds.text, more.text + len(ds.offsets) - 1]), ds.spans + more.spans,
                       np.concatenate([ds.label, more.label]), np.concatenate([ds.source, more.source]),
                       ds.key + more.key)


def fit_target_head(ds: TargetedSet, rows: np.ndarray, init: Sequence[nn.Module] | int = 1, epochs: int = 2,
                    lr: float = 1e-4, weight: str = "sqrt", seed: int = 0, progress: bool = True,
                    position_bias: nn.Embedding | None = None) -> TargetHead:
    """A TargetHead trained on `rows`: its blocks copied from `init` (the encoder's top blocks, whose input
    `ds` holds; `position_bias`: an MPNet encoder's), or that many fresh blocks; the marker and output layer
    from scratch at a higher rate, linear warm-up then decay."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = TargetHead(ds.states.shape[1], init if isinstance(init, int) else len(init),
                      position_buckets=0 if position_bias is None else position_bias.num_embeddings)
    if not isinstance(init, int):
        head.from_layers(init, position_bias)
    cw = class_weight(ds.label[rows], weight)
    w = torch.tensor([cw[c] for c in range(3)], dtype=torch.float32) if cw else None
    fresh = [head.marker, *head.out.parameters()]
    opt = torch.optim.AdamW([{"params": list(head.blocks.parameters()), "lr": lr}, {"params": fresh, "lr": 1e-3}],
                            weight_decay=0.01)
    size = 32
    steps = epochs * math.ceil(len(rows) / size)
    warm = min(100, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
    y = torch.from_numpy(ds.label)
    lengths = ds.lengths(rows)
    bar = tqdm(total=steps, desc="target head", disable=not progress)
    for _ in range(epochs):
        head.train()
        for b in length_batches(lengths, size, rng.permutation):
            idx = rows[b]
            loss = F.cross_entropy(head(*ds.batch(idx)), y[idx], weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return head.eval()


@torch.inference_mode()
def predict_targets(head: TargetHead, ds: TargetedSet, rows: np.ndarray) -> np.ndarray:
    out = np.zeros((len(rows), 3), np.float32)
    order = np.argsort(ds.lengths(rows), kind="stable")
    for s in range(0, len(rows), 256):
        o = order[s : s + 256]
        out[o] = head(*ds.batch(rows[o])).softmax(-1).numpy()
    return out


def pair_rows(ds: TargetedSet, pairs: TargetedSet, fold: np.ndarray, f: int) -> np.ndarray:
    """The rows of join(ds, pairs) of the made-up pairs that fold f's head may train on (`fold`: each of ds's rows'
    fold): both their tweets outside the fold."""
    text_fold = np.zeros(len(ds.offsets) - 1, np.int64)
    text_fold[ds.text] = fold
    return len(ds) + np.flatnonzero((text_fold[pairs.parts] != f).all(1))


def group_folds(ds: TargetedSet, folds: int, seed: int) -> np.ndarray:
    """Fold number per row; every row of one text in one fold (a tweet naming two targets never straddles)."""
    texts = np.unique(ds.text)
    fold_of = np.empty(int(ds.text.max()) + 1, np.int64)
    fold_of[np.random.default_rng(seed).permutation(texts)] = np.arange(len(texts)) % folds
    return fold_of[ds.text]


def candidate_sets(model, data_dir: str | Path, name: str, seed: int = 0,
                   cache_dir: Path | None = FEATURES_DIR) -> tuple[TargetedSet, TargetedSet | None]:
    """(the targeted rows, the made-up pairs or None) over the token states candidate `name` reads."""
    n = len(model.text_encoder.layers())
    blocks = CANDIDATES[name] or 0
    ds = targeted_set(model, data_dir, n - blocks, cache_dir)
    return ds, pair_set(model, data_dir, ds, n - blocks, seed=seed, cache_dir=cache_dir) if blocks else None


def cross_validate(model, data_dir: str | Path, candidates=tuple(CANDIDATES), folds: int = 3, seed: int = 0,
                   cache_dir: Path | None = FEATURES_DIR, progress: bool = True) -> tuple[TargetedSet, dict[str, np.ndarray]]:
    """(the targeted rows over the final states, out-of-fold probabilities of each candidate over them), folds
    grouped by text: post = the model's general text head on the whole post (what every brand got before);
    span_lr = logistic regression over the frozen final [span mean, post mean]; topK = a TargetHead rerunning
    the encoder's top K blocks (`fit_target_head`), trained on the rows and on made-up pairs of tweets
    (`pair_set`; a pair trains only when both its tweets are in the training folds). Each candidate's
    probabilities are cached (a head's take most of an hour of CPU), so `mmsa compare-targets` and
    `mmsa train` share them; only real rows score."""
    final, _ = candidate_sets(model, data_dir, "post", seed, cache_dir)
    fold = group_folds(final, folds, seed)  # the rows and their texts are in the same order at every layer
    out = {}
    for name in candidates:
        blocks = CANDIDATES[name]
        ds, pairs = candidate_sets(model, data_dir, name, seed, cache_dir) if blocks else (final, None)
        key = ds.key + (pairs.key if pairs is not None else "") + (model.version if name == "post" else "")  # post: the heads'
        cache = Path(cache_dir) / f"target-oof-{name}-{key}-{folds}-{seed}.npy" if cache_dir and ds.key else None
        if cache is not None and cache.exists():
            out[name] = np.load(cache)
            continue
        t0 = time.perf_counter()
        p = np.zeros((len(ds), 3), np.float32)
        if name == "post":
            _, post = ds.pooled()
            with torch.no_grad():
                feats = Feats(torch.from_numpy(post), torch.zeros(len(post), model.image_dim))
                p = model.bundle(feats, torch.zeros(len(post), dtype=torch.bool))["text"].softmax(-1).numpy()
        elif name == "span_lr":
            x = np.concatenate(ds.pooled(), 1)
            for f in range(folds):
                tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
                p[te] = fit_lr(x[tr], ds.label[tr], weight="sqrt", seed=seed).predict_proba(x[te])
        else:
            both = join(ds, pairs)
            # Each fold's probabilities are kept as they come (a fold takes half an hour or more): a run that
            # is stopped resumes with the folds it had not finished.
            parts = [cache.with_name(f"{cache.stem}-fold{f}.npy") if cache is not None else None for f in range(folds)]
            for f, part in enumerate(parts):
                tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
                if part is not None and part.exists():
                    p[te] = np.load(part)
                    continue
                head = fit_target_head(both, np.concatenate([tr, pair_rows(ds, pairs, fold, f)]), model.text_encoder.layers()[-blocks:],
                                       seed=seed, progress=progress, position_bias=model.text_encoder.position_bias())
                p[te] = predict_targets(head, both, te)
                if part is not None:
                    _save_array(part, p[te])
        out[name] = p
        if cache is not None:
            _save_array(cache, p)
            if blocks:
                for part in parts:
                    part.unlink(missing_ok=True)
        if progress:
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return final, out


BLENDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)  # the weights of the borrower's own head `borrowed` chooses among
# Rows the blend is chosen on: not SemEval-2016 4C, whose tweets both encoders' top layers were fine-tuned on (as
# SemEval-2017 4A, with post-level labels), so their probabilities there are not out of sample.
BLEND_SOURCES = ("twitter2015", "twitter2017", "dong2014")


def _log_loss(p: np.ndarray, label: np.ndarray) -> float:
    return float(-logp(p)[np.arange(len(p)), label].mean())


def choose_blend(label: np.ndarray, lent: np.ndarray, own: np.ndarray, rows: np.ndarray) -> float:
    """The weight in BLENDS whose `blend_targets(lent, own, weight)` has the least log-loss on `rows`."""
    from mmsa.model import blend_targets

    return min(BLENDS, key=lambda weight: _log_loss(blend_targets(lent[rows], own[rows], weight), label[rows]))


def borrowed(model, lender, data_dir: str | Path, folds: int = 3, seed: int = 0,
             cache_dir: Path | None = FEATURES_DIR) -> tuple[TargetedSet, dict[str, np.ndarray], float, float]:
    """What `model` scores toward targets when it borrows `lender`'s target head (config.json `target_model`):
    (the targeted rows, out-of-fold probabilities of "borrowed", the lender's chosen candidate as it ships
    (temperature fitted out of fold), and "borrowed_blend", those blended with `model`'s own OWN head
    (`mmsa.model.blend_targets`: a head over another encoder errs differently), the weight chosen on the other
    folds' rows of BLEND_SOURCES; the weight chosen on all those rows, for config.json `target_blend`; and the
    own head's temperature fitted on its out-of-fold probabilities). Same folds as `cross_validate`."""
    from mmsa.model import blend_targets

    ds, lent = cross_validate(lender, data_dir, [CHOSEN], folds, seed, cache_dir)
    own = cross_validate(model, data_dir, [OWN], folds, seed, cache_dir)[1][OWN]
    target = tempered(lent[CHOSEN], fit_temperature(lent[CHOSEN], ds.label))
    temperature = fit_temperature(own, ds.label)
    mine = tempered(own, temperature)
    fold = group_folds(ds, folds, seed)
    usable = np.isin(ds.source, BLEND_SOURCES)
    blended = np.zeros_like(target)
    for f in range(folds):
        te = fold == f
        weight = choose_blend(ds.label, target, mine, np.flatnonzero((fold != f) & usable))
        blended[te] = blend_targets(target[te], mine[te], weight)
    weight = choose_blend(ds.label, target, mine, np.flatnonzero(usable))
    return ds, {"borrowed": target, "borrowed_blend": blended}, weight, temperature


def borrow_config(model, lender, data_dir: str | Path, folds: int = 3, seed: int = 0,
                  cache_dir: Path | None = FEATURES_DIR) -> tuple[dict, TargetHead]:
    """The config.json entries of `model` borrowing `lender`'s target head blended with a head of its own
    (`borrowed`): the blend weight, the out-of-fold figures of the blended probabilities and the
    quantification statistics from them (brand shares are estimated with them, `mmsa.quantify`); and that own
    head (OWN, `final_head`), fitted on every row, its temperature fitted out of fold."""
    from mmsa.quantify import quantification_stats

    ds, oof, blend, temperature = borrowed(model, lender, data_dir, folds, seed, cache_dir)
    p = oof["borrowed_blend"]
    head = final_head(model, OWN, data_dir, seed, cache_dir)
    head.temperature.fill_(temperature)
    return {"target_blend": blend,
            "target_train": {"data": str(data_dir), "lender": lender.version, "rows": len(ds), "folds": folds,
                             "seed": seed, "own": OWN, "blend": blend},
            "target_out_of_fold": {name: {k: sc[k] for k in ("n", "accuracy", "macro_recall", "macro_f1")}
                                   for name, sc in scores_by_set(ds, p).items()},
            "quantification": quantification_stats(p, ds.label, seed=seed)}, head


def scores_by_set(ds: TargetedSet, probs: np.ndarray) -> dict[str, dict]:
    """classification_metrics per source set (accuracy, macro recall, ...) of argmax labels."""
    return {name: classification_metrics(ds.label[ds.source == name], probs[ds.source == name].argmax(1))
            for name in TARGETED_SETS}


# The bars of issue 33 on the judged test splits, per set: (metric, value).
BARS = {"twitter2015": ("accuracy", 72.0), "twitter2017": ("accuracy", 65.0), "dong2014": ("accuracy", 71.0),
        "semeval2016_4c": ("macro_recall", 68.0)}
WHAT = {"post": "the general text head on the whole post (every brand got the post's label)",
        "span_lr": "logistic regression over frozen [target-span mean, post mean] of the final states",
        "top1": "TargetHead: the encoder's last block rerun with the target marked, on rows + 10,000 made-up pairs",
        "top2": "the same with the encoder's top two blocks",
        "top3": "the same with the encoder's top three blocks",
        "top4": "the same with the encoder's top four blocks",
        "borrowed": f"the lender's target head as it ships (its {CHOSEN}), over the lender's encoder",
        "borrowed_blend": f"that, blended with this model's {OWN} (geometric; weight chosen on the other folds)"}


def compare(model, data_dir: str | Path, out: str | Path | None, candidates=tuple(CANDIDATES), folds: int = 3,
            seed: int = 0, cache_dir: Path | None = FEATURES_DIR, oof_path: str | Path | None = None,
            lender=None) -> dict:
    """Cross-validate the candidates over every targeted set (grouped by text); write `out`/targeted.md and
    its JSON, and with `oof_path` the chosen candidate's calibrated out-of-fold probabilities and the labels
    (an .npz for `mmsa quantify-compare --probs`; labelled data, so not for the repository). With `lender` (a
    model with a target head), also the candidates of borrowing its head (`borrowed`), in the same folds."""
    unknown = set(candidates) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}: expected some of {', '.join(CANDIDATES)}")
    ds, oof = cross_validate(model, data_dir, candidates, folds, seed, cache_dir)
    if lender is not None:
        oof.update(borrowed(model, lender, data_dir, folds, seed, cache_dir)[1])
    result = {"n": len(ds), "texts": int(len(np.unique(ds.text))), "folds": folds, "seed": seed, "model": model.version,
              "lender": None if lender is None else lender.version,
              "scores": {name: {**scores_by_set(ds, p), "all": classification_metrics(ds.label, p.argmax(1))}
                         for name, p in oof.items()}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "targeted.md").write_text(table(result))
        (out / "targeted.json").write_text(json.dumps(result, indent=1) + "\n")
    if oof_path is not None and CHOSEN in oof:
        p = tempered(oof[CHOSEN], fit_temperature(oof[CHOSEN], ds.label))
        np.savez_compressed(oof_path, probs=p, labels=ds.label)
    return result


def table(result: dict) -> str:
    sets = list(TARGETED_SETS)
    head = "| candidate | what | " + " | ".join(f"{s} acc / macro recall" for s in sets) + " | all: macro recall |"
    lines = [head, "|" + "---|" * (len(sets) + 3)]
    for name, sc in result["scores"].items():
        cells = [f"{100 * sc[s]['accuracy']:.1f} / {100 * sc[s]['macro_recall']:.1f}" for s in sets]
        lines.append(f"| {name} | {WHAT[name]} | " + " | ".join(cells) + f" | {100 * sc['all']['macro_recall']:.1f} |")
    bars = " | ".join(f"{'acc' if m == 'accuracy' else 'macro recall'} {v:.0f}" for m, v in BARS.values())
    lines.append(f"| bar (judged test splits) | | {bars} | |")
    lent = f" (lender: `{result['lender']}`)" if result.get("lender") else ""
    return (f"# Sentiment toward a target: {result['folds']}-fold cross-validation grouped by text over the targeted sets\n\n"
            f"Produced by `mmsa compare-targets` over "
            f"{result['n']:,} (text, target) rows of ../shared/data/targeted/ ({result['texts']:,} distinct texts; "
            f"Twitter-2015/2017 train+dev, Dong 2014 train, SemEval-2016 4C all four files), token states of "
            f"`{result['model']}`{lent}. The rows of one tweet (one per target, often with different labels) share a fold. "
            "Each candidate is fitted on the training folds only; the held-out fold only scores.\n\n"
            "Caveat: the encoder's top layers were fine-tuned on SemEval-2017 4A tweets, which overlap the 2016 4C "
            "tweets (with post-level labels), so 4C figures lean optimistic for every candidate alike; the bars "
            "are for the judged test splits, which no candidate saw.\n\n" + "\n".join(lines) + "\n")


def position_buckets(model) -> int:
    """The buckets of the relative position bias a target head over `model`'s encoder copies (0: none)."""
    bias = model.text_encoder.position_bias()
    return 0 if bias is None else bias.num_embeddings


def final_head(model, name: str, data_dir: str | Path, seed: int = 0, cache_dir: Path | None = FEATURES_DIR) -> TargetHead:
    """Candidate `name`'s TargetHead fitted on all its rows (real rows and pairs), temperature 1, cached like
    the out-of-fold probabilities."""
    from safetensors.torch import load_file, save_file

    blocks = CANDIDATES[name]
    ds, pairs = candidate_sets(model, data_dir, name, seed, cache_dir)
    both = join(ds, pairs)
    cache = Path(cache_dir) / f"target-head-{name}-{both.key}-{seed}.safetensors" if cache_dir and both.key else None
    if cache is not None and cache.exists():
        head = TargetHead(ds.states.shape[1], blocks, position_buckets=position_buckets(model))
        head.load_state_dict(load_file(str(cache)))
        return head.eval()
    head = fit_target_head(both, np.arange(len(both)), model.text_encoder.layers()[-blocks:], seed=seed,
                           position_bias=model.text_encoder.position_bias())
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tmp)
    return head


def write_target_head(out: Path, head: TargetHead, config: dict) -> None:
    """Save `head` in the model folder `out` as target_head.safetensors (fp16: half the bytes, and the
    probabilities move by less than 1e-3; loaded as fp32) and name it, with the shape
    SentimentModel rebuilds it from, in `config` (the folder's config.json entries, updated in place)."""
    from safetensors.torch import save_file

    with atomic_path(out / "target_head.safetensors") as tmp:
        save_file({k: v.half().contiguous() for k, v in head.state_dict().items()}, tmp)
    config.update({"target_head": "target_head.safetensors", "target_blocks": len(head.blocks),
                   "target_position_buckets": 0 if head.position_bias is None else head.position_bias.num_embeddings})


def add_target_head(out: str | Path, data_dir: str | Path, folds: int = 3, seed: int = 0,
                    cache_dir: Path | None = FEATURES_DIR) -> dict:
    """Give the model folder `out` (written by `mmsa.stack.train_model`) the target head: the chosen candidate
    fitted on every targeted row, in target_head.safetensors (fp16), and in config.json how many blocks it
    reruns, the candidate's out-of-fold figures and the quantification statistics from its calibrated
    out-of-fold probabilities (brand shares are estimated with them, `mmsa.quantify`). Returns the new config."""
    from mmsa import files
    from mmsa.model import SentimentModel
    from mmsa.quantify import quantification_stats

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    for k in ("target_head", "target_blocks", "target_position_buckets"):  # the encoders only: a head from an earlier fit must not load
        config.pop(k, None)
    files.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    model = SentimentModel(out)
    ds, oof = cross_validate(model, data_dir, [CHOSEN], folds, seed, cache_dir)
    oof = oof[CHOSEN]
    t = fit_temperature(oof, ds.label)
    head = final_head(model, CHOSEN, data_dir, seed, cache_dir)
    head.temperature.fill_(t)
    write_target_head(out, head, config)
    config.update({
        "target_train": {"data": str(data_dir), "candidate": CHOSEN, "rows": len(ds), "folds": folds, "seed": seed,
                         "temperature": t},
        "target_out_of_fold": {name: {k: sc[k] for k in ("n", "accuracy", "macro_recall", "macro_f1")}
                               for name, sc in scores_by_set(ds, oof).items()},
        "quantification": quantification_stats(tempered(oof, t), ds.label, seed=seed),
    })
    files.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return config
