"""Training: the pieces every recipe shares, and the paper's fusion heads.

Shared, one home each: class weights (`class_weight`), the fixed hold-out of a text-only set
(`holdout_split`), shuffled batches of similar length (`length_batches`), threads and seeds. The shipped
model's recipe (stacked linear heads, then the target head) is `mmsa.recipe.train_default`, over
`mmsa.stack` and `mmsa.targeted`.

This module's own path trains the paper's fusion heads (`mmsa train --head NAME`, and `mmsa compare`'s
`mlp` candidate) and fine-tunes the text encoder's top layers on labelled tweets first (`--pretrain-text`:
how the shipped model's text layers were made). Frozen-encoder features come from `mmsa.features`' cache,
so heads train in seconds and every head/seed of a comparison reuses one encoding pass; fine-tuning keeps
the image side cached and runs the text encoder in the loop. The dev set is never used to train or to stop:
the training set is split into K stratified folds, each member is trained on K-1 of them and early-stopped
on the one it did not see, and the saved model averages its members' probabilities (mmsa.heads.Ensemble).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mmsa.data import LabelledSet
from mmsa.encoders import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    LOW_RANK,
    TOKENIZATION_VERSION,
    ImageEncoder,
    TextEncoder,
    load_image_encoder,
    load_text_encoder,
    overlay_text_layers,
)
from mmsa.evaluate import classification_metrics
from mmsa.features import FEATURES_DIR, fingerprint, image_features, pooled_features, text_features
from mmsa.heads import Bundle, Ensemble, Feats
from mmsa.model import DEFAULT_LANGUAGES, load_model
from mmsa.schema import LABELS

K = len(LABELS)


@dataclass
class TrainConfig:
    """One run of the paper-head path; `head` is one of mmsa.heads.HEAD_NAMES (no default: the shipped
    model is not one of them)."""

    head: str
    text_encoder: str = DEFAULT_TEXT_ENCODER
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    finetune_layers: int = 0  # top text-encoder layers trained; 0 = frozen encoders, cached features
    folds: int = 5  # stratified folds of the training set; a member early-stops on the fold it did not train on
    members: int = 5  # members trained (one per fold, at most `folds`); the model averages their probabilities
    pretrain_text: str | None = None  # labelled text-only JSONL (SemEval) to fine-tune the text side on first
    pretrain_layers: int = 3
    pretrain_rank: int = 0  # 0: the top blocks' weights are trained and saved; r: rank-r updates of them (a large backbone's few MB)
    pretrain_epochs: int = 1
    pretrain_max: int = 45000  # training examples used per epoch (45000 = all 44,536 SemEval tweets outside the hold-out)
    pretrain_teacher: str | None = None  # a model (the large tier) whose text-path probabilities are half the target
    epochs: int = 20
    batch_size: int = 16
    lr_head: float = 1e-3
    lr_encoder: float = 3e-5
    weight_decay: float = 0.01
    dropout: float = 0.1
    hidden: int = 256
    patience: int = 4
    class_weight: str = "none"  # none | sqrt | balanced (`class_weight`); none was best out-of-fold for these heads on MVSA
    seed: int = 0
    max_length: int = 64
    head_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:  # checked when made, before any encoding
        if not 1 <= self.members <= self.folds or self.folds < 2:
            raise ValueError(f"need 2 <= folds and 1 <= members <= folds, got folds={self.folds} members={self.members}")
        if self.finetune_layers and self.members > 1:
            raise ValueError("fine-tuning text layers trains one text encoder per member: use members=1")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Intra-op threads. On a shared, oversubscribed CPU, 2 threads made small steps ~100x slower than 1
    (threads wait on each other at every op), so the CLI defaults to 1."""
    torch.set_num_threads(max(1, n))


def class_weight(y: np.ndarray, mode: str) -> dict[int, float] | None:
    """none | sqrt | balanced: per-class weights that move the fitted prior from the data's towards uniform
    (balanced: inverse frequency; sqrt: its square root), as scikit-learn's `class_weight` takes them."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=K).astype(float)
    w = (len(y) / (K * counts.clip(min=1))) ** (0.5 if mode == "sqrt" else 1.0)
    return {c: float(w[c]) for c in range(K)}


def loss_weight(y: np.ndarray, mode: str) -> torch.Tensor | None:
    """`class_weight` as cross-entropy's `weight` tensor (its weighted mean makes their scale irrelevant)."""
    w = class_weight(y, mode)
    return None if w is None else torch.tensor([w[c] for c in range(K)], dtype=torch.float32)


def length_batches(lengths: np.ndarray, size: int, permutation: Callable[[int], np.ndarray]) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length: far less padding for a CPU-bound encoder or block.
    `permutation(n)` shuffles range(n), from the caller's own random source, so each caller keeps its stream."""
    perm = permutation(len(lengths))
    batches = []
    for s in range(0, len(perm), size * 50):
        part = perm[s : s + size * 50]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    return [batches[i] for i in permutation(len(batches))]


def holdout_split(n: int, frac: float = 0.1, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, held-out) index split of a text-only set, independent of the training seed."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * frac))
    return np.sort(perm[k:]), np.sort(perm[:k])


def set_trainable_text_layers(enc: TextEncoder, k: int) -> list[nn.Parameter]:
    """Freeze everything but the top k transformer blocks; returns the trainable parameters."""
    for p in enc.model.parameters():
        p.requires_grad = False
    params = []
    layers = enc.layers()
    for layer in layers[len(layers) - k :] if k else []:
        for p in layer.parameters():
            p.requires_grad = True
            params.append(p)
    return params


def add_low_rank(enc: TextEncoder, k: int, rank: int) -> list[nn.Parameter]:
    """Freeze the encoder and give each linear map of its top k blocks a trainable rank-`rank` update (LoRA, by
    peft; the large tier's extra); returns the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in enc.model.parameters():
        p.requires_grad = False
    n = len(enc.layers())
    top = tuple(f"encoder.layer.{i}." for i in range(n - k, n))
    targets = [name for name, m in enc.model.named_modules() if isinstance(m, nn.Linear) and name.startswith(top)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), enc.model)
    return [p for name, p in enc.model.named_parameters() if "lora_" in name]


def merge_low_rank(enc: TextEncoder) -> dict[str, torch.Tensor]:
    """The updates of `add_low_rank` as a text-layers file's low-rank pairs, folded into the weights the way a
    model folder loads them (`overlay_text_layers`), so the encoder is plain again."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, m in list(enc.model.named_modules()):
        if isinstance(m, LoraLayer):
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight * m.scaling["default"]
            state[f"{name}.weight{LOW_RANK[0]}"], state[f"{name}.weight{LOW_RANK[1]}"] = a.detach().clone(), b.detach().clone()
            parent, _, child = name.rpartition(".")
            setattr(enc.model.get_submodule(parent), child, m.get_base_layer())
    overlay_text_layers(enc.model, state)
    return state


def text_layer_state(enc: TextEncoder, k: int) -> dict[str, torch.Tensor]:
    """State of the top k blocks only (what fine-tuning changed), keyed as in the HF model."""
    n = len(enc.layers())
    prefixes = tuple(f"encoder.layer.{i}." for i in range(n - k, n))
    return {name: t.detach().clone() for name, t in enc.model.state_dict().items() if name.startswith(prefixes)}


def fold_ids(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Stratified fold number (0..k-1) per row: every fold keeps the class shares."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        folds[rows] = (np.arange(len(rows)) + c) % k
    return folds


def batch_feats(text_enc: TextEncoder, finetune: bool, hidden: bool, text: dict, img: dict, idx: torch.Tensor,
                train: bool) -> tuple[Feats, torch.Tensor]:
    """One batch of Feats from cached features (or, when fine-tuning, from the text encoder run now)."""
    if finetune:
        ids, am = text["input_ids"][idx], text["attention_mask"][idx]
        n = int(am.sum(1).max())
        text_enc.train(train)
        o = text_enc(ids[:, :n], am[:, :n])
        t_hidden, t_mask, t_pooled = o.hidden, o.mask, o.pooled
    else:
        t_pooled = text["t_pooled"][idx]
        m = text["t_mask"][idx]
        n = max(int(m.sum(1).max()), 1)
        t_hidden = text["t_hidden"][idx, :n].float() if hidden else None
        t_mask = m[:, :n]
    f = Feats(
        t_pooled=t_pooled,
        i_pooled=img["i_pooled"][idx],
        t_hidden=t_hidden if hidden else None,
        t_mask=t_mask if hidden else None,
        i_hidden=img["i_hidden"][idx].float() if hidden else None,
        i_mask=img["i_mask"][idx] if hidden else None,
    )
    return f, img["has_image"][idx]


def predict_logits(module: nn.Module, text_enc: TextEncoder, finetune: bool, text: dict, img: dict) -> dict[str, torch.Tensor]:
    """Outputs of a Bundle or Ensemble ("fused", "text", "image") over a whole feature set."""
    module.eval()
    n = len(img["has_image"])
    outs: dict[str, list] = {"fused": [], "text": [], "image": []}
    with torch.inference_mode():
        for s in range(0, n, 64):
            idx = torch.arange(s, min(s + 64, n))
            f, has = batch_feats(text_enc, finetune, module.needs_hidden, text, img, idx, train=False)
            for k, v in module(f, has).items():
                outs[k].append(v)
    return {k: torch.cat(v) for k, v in outs.items()}


class Trainer:
    """One member: a Bundle (optionally with the top text layers) trained on one set, early-stopped on another."""

    def __init__(self, cfg: TrainConfig, text_enc: TextEncoder, image_dim: int, train_text: dict, val_text: dict,
                 train_img: dict, val_img: dict, y_train: np.ndarray, y_val: np.ndarray):
        self.cfg = cfg
        self.text_enc = text_enc
        seed_everything(cfg.seed)  # head initialisation depends on the seed only
        self.bundle = Bundle(cfg.head, text_enc.dim, image_dim, cfg.hidden, cfg.dropout, **cfg.head_kwargs)
        self.train_text, self.val_text = train_text, val_text
        self.train_img, self.val_img = train_img, val_img
        self.y_train, self.y_val = torch.from_numpy(y_train), torch.from_numpy(y_val)

    def predict_logits(self, text: dict, img: dict) -> dict[str, torch.Tensor]:
        return predict_logits(self.bundle, self.text_enc, bool(self.cfg.finetune_layers), text, img)

    def fit(self, progress: bool = True) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        enc_params = set_trainable_text_layers(self.text_enc, cfg.finetune_layers)
        groups = [{"params": list(self.bundle.parameters()), "lr": cfg.lr_head}]
        if enc_params:
            groups.append({"params": enc_params, "lr": cfg.lr_encoder})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        weight = loss_weight(self.y_train.numpy(), cfg.class_weight)
        gen = torch.Generator().manual_seed(cfg.seed)
        n = len(self.y_train)
        steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
        total = steps_per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch // 2)) * max(0.05, 1 - s / total)
        )
        best, best_state, history, bad = -1.0, None, [], 0
        start = time.perf_counter()
        bar = tqdm(total=total, desc=f"train {cfg.head} seed={cfg.seed}", disable=not progress, leave=False)
        for epoch in range(cfg.epochs):
            self.bundle.train()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for s in range(0, n, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                f, has = batch_feats(self.text_enc, bool(cfg.finetune_layers), self.bundle.needs_hidden,
                                     self.train_text, self.train_img, idx, train=True)
                out = self.bundle(f, has)
                y = self.y_train[idx]
                loss = sum(F.cross_entropy(out[k], y, weight=weight) for k in ("fused", "text", "image"))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
            m = classification_metrics(self.y_val.numpy(), self.predict_logits(self.val_text, self.val_img)["fused"].argmax(-1).numpy())
            score = (m["accuracy"] + m["weighted_f1"]) / 2
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **{k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")}})
            bar.set_postfix(acc=f"{m['accuracy']:.3f}", wf1=f"{m['weighted_f1']:.3f}")
            if score > best:
                best, bad = score, 0
                best_state = (
                    copy.deepcopy(self.bundle.state_dict()),
                    text_layer_state(self.text_enc, cfg.finetune_layers) if cfg.finetune_layers else None,
                )
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        bar.close()
        self.bundle.load_state_dict(best_state[0])
        if best_state[1]:
            self.text_enc.model.load_state_dict(best_state[1], strict=False)
        for p in self.text_enc.model.parameters():
            p.requires_grad = False
        self.text_enc.eval()
        self.bundle.eval()
        best_epoch = max(history, key=lambda h: (h["accuracy"] + h["weighted_f1"]) / 2)["epoch"]
        return {"history": history, "best_epoch": best_epoch, "train_seconds": time.perf_counter() - start}


def tokenize_all(enc: TextEncoder, texts: list[str]) -> dict:
    tok = enc.tokenize(texts)
    return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}


@dataclass
class EncodedSets:
    """Encoders applied to train and dev once: what every member of every run trains from."""

    text_enc: TextEncoder
    image_dim: int
    image_size: int
    train_text: dict
    train_img: dict
    dev_text: dict
    dev_img: dict
    y_train: np.ndarray
    y_dev: np.ndarray
    text_head_init: dict | None = None  # the SemEval text classifier: a warm start for the text branch
    pretrain_metrics: dict | None = None
    pretrain_layers: dict | None = None  # the text-layers file the pre-training wrote (low-rank pairs with a rank)


def encode_sets(
    cfg: TrainConfig,
    train: LabelledSet,
    dev: LabelledSet,
    cache_dir: Path | None = FEATURES_DIR,
    text_enc: TextEncoder | None = None,
    image_enc: ImageEncoder | None = None,
) -> EncodedSets:
    """Load encoders, run the text pre-training, build (cached) features for train and dev."""
    text_enc = text_enc or load_text_encoder(cfg.text_encoder, max_length=cfg.max_length)
    pre = pretrained_text(cfg, text_enc, cache_dir) if cfg.pretrain_text else None
    image_enc = image_enc or load_image_encoder(cfg.image_encoder)
    image_enc.eval()
    tr_img, dv_img = image_features(image_enc, train, cache_dir), image_features(image_enc, dev, cache_dir)
    if cfg.finetune_layers:
        tr_txt, dv_txt = tokenize_all(text_enc, train.texts), tokenize_all(text_enc, dev.texts)
    else:
        tr_txt, dv_txt = text_features(text_enc, train, cache_dir), text_features(text_enc, dev, cache_dir)
    return EncodedSets(text_enc, image_enc.dim, image_enc.image_size, tr_txt, tr_img, dv_txt, dv_img, train.labels,
                       dev.labels, *((pre["head"], pre["metrics"], pre["layers"]) if pre else ()))


def _rows(features: dict, rows: np.ndarray) -> dict:
    return {name: t[rows] for name, t in features.items()}


def train_members(cfg: TrainConfig, sets: EncodedSets, progress: bool = True) -> tuple[Ensemble, list[dict]]:
    """`cfg.members` bundles, member k trained on every fold but k and early-stopped on fold k."""
    folds = fold_ids(sets.y_train, cfg.folds, cfg.seed)
    bundles, fits = [], []
    for k in range(cfg.members):
        tr, va = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        trainer = Trainer(replace(cfg, seed=cfg.seed * 100 + k), sets.text_enc, sets.image_dim,
                          _rows(sets.train_text, tr), _rows(sets.train_text, va), _rows(sets.train_img, tr),
                          _rows(sets.train_img, va), sets.y_train[tr], sets.y_train[va])
        if sets.text_head_init is not None:  # same label set: start the text branch from the SemEval classifier
            trainer.bundle.text.load_state_dict(sets.text_head_init)
        fits.append(trainer.fit(progress=progress))
        bundles.append(trainer.bundle)
    return Ensemble(bundles).eval(), fits


def save_model(out: str | Path, cfg: TrainConfig, sets: EncodedSets, ensemble: Ensemble, extra: dict | None = None,
               name: str | None = None) -> Path:
    """config.json + heads.safetensors (+ text_layers.safetensors, fp16, only the fine-tuned blocks); `name`
    (default: the folder's) is the model's name in every scored row, as in mmsa.stack.train_model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # fp16 on disk (loaded back into fp32): halves the repo's share of a many-member model.
    save_file({k: v.half().contiguous() for k, v in ensemble.state_dict().items()}, out / "heads.safetensors")
    text_layers = None
    if cfg.finetune_layers or cfg.pretrain_text:
        k = max(cfg.finetune_layers, cfg.pretrain_layers if cfg.pretrain_text else 0)
        low_rank = cfg.pretrain_rank and not cfg.finetune_layers  # else the blocks changed again, whole
        state = {n: t.half().contiguous() for n, t in
                 (sets.pretrain_layers if low_rank else text_layer_state(sets.text_enc, k)).items()}
        save_file(state, out / "text_layers.safetensors")
        text_layers = "text_layers.safetensors"
    config = {
        "name": name or out.name,
        "labels": list(LABELS),
        "text_encoder": cfg.text_encoder,
        "image_encoder": cfg.image_encoder,
        "languages": list(DEFAULT_LANGUAGES),
        "text_layers": text_layers,
        "max_length": cfg.max_length,
        "image_size": sets.image_size,
        "head": cfg.head,
        "members": len(ensemble.members),
        "text_dim": sets.text_enc.dim,
        "image_dim": sets.image_dim,
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "head_kwargs": cfg.head_kwargs,
        "train_config": asdict(cfg),
        "pretrain_metrics": sets.pretrain_metrics,
        **(extra or {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def dev_report(cfg: TrainConfig, sets: EncodedSets, ensemble: Ensemble) -> dict:
    """Dev metrics of the model (fused, text branch, image branch) and of each member alone."""
    finetune = bool(cfg.finetune_layers)
    logits = predict_logits(ensemble, sets.text_enc, finetune, sets.dev_text, sets.dev_img)
    member_acc = [
        classification_metrics(sets.y_dev, predict_logits(m, sets.text_enc, finetune, sets.dev_text, sets.dev_img)["fused"]
                               .argmax(-1).numpy())["accuracy"]
        for m in ensemble.members
    ]
    return {
        "dev": classification_metrics(sets.y_dev, logits["fused"].argmax(-1).numpy()),
        "dev_text_only": classification_metrics(sets.y_dev, logits["text"].argmax(-1).numpy()),
        "dev_image_only": classification_metrics(sets.y_dev, logits["image"].argmax(-1).numpy()),
        "dev_member_accuracy": member_acc,
    }


def run(
    cfg: TrainConfig,
    data_dir: str | Path,
    out: str | Path | None,
    cache_dir: Path | None = FEATURES_DIR,
    progress: bool = True,
    name: str | None = None,
) -> dict:
    """Train on DATA/train.jsonl (folds inside it for early stopping), report on DATA/dev.jsonl, save to `out`
    (named `name`, default the folder's)."""
    from mmsa.data import load_jsonl

    data_dir = Path(data_dir)
    train, dev = load_jsonl(data_dir / "train.jsonl"), load_jsonl(data_dir / "dev.jsonl")
    sets = encode_sets(cfg, train, dev, cache_dir)
    start = time.perf_counter()
    ensemble, fits = train_members(cfg, sets, progress)
    summary = {**dev_report(cfg, sets, ensemble), "best_epochs": [f["best_epoch"] for f in fits],
               "train_seconds": time.perf_counter() - start, "members": fits}
    if out is not None:
        save_model(out, cfg, sets, ensemble, {"dev_metrics": summary["dev"], "dev_member_accuracy": summary["dev_member_accuracy"],
                                              "best_epochs": summary["best_epochs"]}, name)
    return summary


def pretrain_text_encoder(cfg: TrainConfig, enc: TextEncoder, path: str | Path, progress: bool = True) -> dict:
    """Fine-tune the top `pretrain_layers` blocks + a text classifier on a text-only labelled set.

    10% of the set (fixed seed) is held out and only used for the reported metrics.
    """
    from mmsa.data import load_jsonl
    from mmsa.heads import TextHead

    seed_everything(cfg.seed)
    ds = load_jsonl(path, with_images=False)
    tr_idx, ho_idx = holdout_split(len(ds))
    tr_idx = np.sort(np.random.default_rng(cfg.seed).permutation(tr_idx)[: cfg.pretrain_max])
    tok = tokenize_all(enc, ds.texts)
    ids, am, y = tok["input_ids"], tok["attention_mask"], torch.from_numpy(ds.labels)
    lengths = am.sum(1).numpy()
    soft = torch.from_numpy(teacher_probs(cfg.pretrain_teacher, path)) if cfg.pretrain_teacher else None
    head = TextHead(enc.dim, 0, cfg.hidden, cfg.dropout)
    if cfg.pretrain_rank:
        params, lr = add_low_rank(enc, cfg.pretrain_layers, cfg.pretrain_rank), 5e-4  # LoRA's usual rate: B starts at 0
    else:
        params, lr = set_trainable_text_layers(enc, cfg.pretrain_layers), 5e-5
    batch = 32
    opt = torch.optim.AdamW(
        [{"params": params, "lr": lr}, {"params": list(head.parameters()), "lr": 1e-3}], weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    total = cfg.pretrain_epochs * ((len(tr_idx) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * max(0.0, 1 - s / total))
    weight = loss_weight(ds.labels[tr_idx], cfg.class_weight)
    bar = tqdm(total=total, desc="pretrain text", disable=not progress)

    def run_batch(idx: torch.Tensor) -> torch.Tensor:
        n = int(am[idx].sum(1).max())
        o = enc(ids[idx, :n], am[idx, :n])
        return head(Feats(t_pooled=o.pooled, i_pooled=o.pooled))

    tr = torch.from_numpy(tr_idx)
    for _ in range(cfg.pretrain_epochs):
        enc.train()
        head.train()
        for b in length_batches(lengths[tr_idx], batch, lambda n: torch.randperm(n, generator=gen).numpy()):
            idx = tr[torch.from_numpy(b)]
            logits = run_batch(idx)
            loss = F.cross_entropy(logits, y[idx], weight=weight)
            if soft is not None:  # distillation: the label and the teacher's probabilities, weighed equally
                loss = (loss + F.cross_entropy(logits, soft[idx], weight=weight)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params + list(head.parameters()), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    enc.eval()
    head.eval()
    preds = []
    ho = torch.from_numpy(ho_idx[np.argsort(lengths[ho_idx], kind="stable")])
    with torch.inference_mode():
        for s in range(0, len(ho), 128):
            preds.append(run_batch(ho[s : s + 128]).argmax(-1))
    metrics = classification_metrics(ds.labels[ho.numpy()], torch.cat(preds).numpy())
    layers = merge_low_rank(enc) if cfg.pretrain_rank else text_layer_state(enc, cfg.pretrain_layers)
    for p in enc.model.parameters():
        p.requires_grad = False
    return {"layers": layers, "head": head.state_dict(), "metrics": metrics}


def teacher_probs(teacher: str | Path, path: str | Path) -> np.ndarray:
    """(N, 3) a teacher model's probabilities for the texts of the labelled JSONL `path`, from its path for posts
    without an image (on a stacked model: its general text head, trained on general tweets), over its pooled
    text vectors (mmsa.features' cache: the large tier's training already encoded SemEval)."""
    m = load_model(teacher)
    t = torch.from_numpy(pooled_features(m, path, with_images=False).text)
    with torch.inference_mode():
        out = m.bundle(Feats(t_pooled=t, i_pooled=torch.zeros(len(t), m.image_dim)), torch.zeros(len(t), dtype=torch.bool))
    return out["fused"].softmax(-1).numpy()


def pretrained_text(cfg: TrainConfig, enc: TextEncoder, cache_dir: Path | None) -> dict:
    """SemEval stage, cached on disk (keyed by encoder weights + data + settings), then applied to `enc`."""
    key = hashlib.sha256(
        json.dumps(
            [fingerprint(enc.model), str(Path(cfg.pretrain_text).resolve()), Path(cfg.pretrain_text).stat().st_size,
             cfg.pretrain_layers, cfg.pretrain_epochs, cfg.pretrain_max, cfg.hidden, cfg.class_weight, cfg.max_length,
             TOKENIZATION_VERSION]
            + ([cfg.pretrain_rank] if cfg.pretrain_rank else [])
            + ([load_model(cfg.pretrain_teacher).version] if cfg.pretrain_teacher else [])
        ).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"pretrain-{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        state = load_file(path)
        pre = {
            "layers": {k[7:]: v for k, v in state.items() if k.startswith("layers.")},
            "head": {k[5:]: v for k, v in state.items() if k.startswith("head.")},
            "metrics": json.loads(path.with_suffix(".json").read_text()),
        }
        overlay_text_layers(enc.model, pre["layers"])
        return pre
    # Seed 0 for this stage whatever the run's seed: all seeds of a comparison share one text pre-training.
    pre = pretrain_text_encoder(TrainConfig(**{**asdict(cfg), "seed": 0}), enc, cfg.pretrain_text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {**{f"layers.{k}": v for k, v in pre["layers"].items()}, **{f"head.{k}": v for k, v in pre["head"].items()}}
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        path.with_suffix(".json").write_text(json.dumps(pre["metrics"], indent=2))
    return pre
