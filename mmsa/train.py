"""Training: cached frozen features, optional fine-tuning of the top text layers, early stopping on dev.

Frozen-encoder features are cached on disk (fp16 safetensors keyed by encoder weights + data
file) so that heads train in seconds and every head/seed of a comparison reuses one encoding
pass. Fine-tuning keeps the image side cached and runs the text encoder in the loop.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mmsa.data import LabelledSet, load_image
from mmsa.encoders import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    ImageEncoder,
    TextEncoder,
    load_image_encoder,
    load_text_encoder,
    masked_mean,
)
from mmsa.evaluate import classification_metrics
from mmsa.heads import Bundle, Feats
from mmsa.schema import LABELS

DEFAULT_CACHE = Path.home() / ".cache" / "mmsa" / "features"


@dataclass
class TrainConfig:
    head: str = "native_combine"
    text_encoder: str = DEFAULT_TEXT_ENCODER
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    finetune_layers: int = 0  # top text-encoder layers trained; 0 = frozen encoders, cached features
    pretrain_text: str | None = None  # labelled text-only JSONL (SemEval) to fine-tune the text side on first
    pretrain_layers: int = 3
    pretrain_epochs: int = 1
    pretrain_max: int = 20000  # training examples used per epoch (CPU budget); the held-out 10% is always full
    epochs: int = 20
    batch_size: int = 16
    lr_head: float = 1e-3
    lr_encoder: float = 3e-5
    weight_decay: float = 0.01
    dropout: float = 0.1
    hidden: int = 256
    patience: int = 4
    class_weight: str = "sqrt"  # none | sqrt | balanced (inverse frequency)
    seed: int = 0
    max_length: int = 64
    head_kwargs: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Intra-op threads. On a shared, oversubscribed CPU, 2 threads made small steps ~100x slower than 1
    (threads wait on each other at every op), so the CLI defaults to 1."""
    torch.set_num_threads(max(1, n))


def fingerprint(module: nn.Module) -> str:
    """sha256 of all weights: cache keys follow the weights, not a name that may be reused."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _set_key(ds: LabelledSet) -> str:
    h = hashlib.sha256(ds.name.encode())
    for t, im in zip(ds.texts, ds.images):
        h.update(t.encode())
        h.update(str(im).encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def encode_texts(enc: TextEncoder, texts: list[str], batch_size: int = 64, desc: str = "text") -> dict:
    """Hidden states padded to the longest text (fp16) + mask + fp32 pooled; sorted batches, order kept."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out_h, out_m, out_p = [None] * len(texts), [None] * len(texts), [None] * len(texts)
    for s in tqdm(range(0, len(texts), batch_size), desc=f"encode {desc}", leave=False):
        idx = order[s : s + batch_size]
        o = enc.encode([texts[i] for i in idx])
        for j, i in enumerate(idx):
            n = int(o.mask[j].sum())
            out_h[i], out_m[i], out_p[i] = o.hidden[j, :n].half(), n, o.pooled[j]
    L = max(out_m) if texts else 1
    hidden = torch.zeros(len(texts), L, enc.dim, dtype=torch.float16)
    mask = torch.zeros(len(texts), L, dtype=torch.bool)
    for i, (h, n) in enumerate(zip(out_h, out_m)):
        hidden[i, :n], mask[i, :n] = h, True
    pooled = torch.stack(out_p) if texts else torch.zeros(0, enc.dim)
    return {"t_hidden": hidden, "t_mask": mask, "t_pooled": pooled.float()}


@torch.inference_mode()
def encode_images(enc: ImageEncoder, paths: list, batch_size: int = 32, desc: str = "image") -> dict:
    """Feature maps as sequences (fp16) + pooled; rows without an image are zeros, has_image False."""
    has = torch.tensor([p is not None for p in paths], dtype=torch.bool)
    probe = enc.encode([np.zeros((enc.image_size, enc.image_size, 3), np.uint8)])
    L = probe.hidden.shape[1]
    hidden = torch.zeros(len(paths), L, enc.dim, dtype=torch.float16)
    pooled = torch.zeros(len(paths), enc.dim)
    idx = [i for i, p in enumerate(paths) if p is not None]
    for s in tqdm(range(0, len(idx), batch_size), desc=f"encode {desc}", leave=False):
        chunk = idx[s : s + batch_size]
        o = enc.encode([load_image(paths[i], enc.image_size) for i in chunk])
        hidden[chunk], pooled[chunk] = o.hidden.half(), o.pooled
    return {"i_hidden": hidden, "i_mask": torch.ones(len(paths), L, dtype=torch.bool), "i_pooled": pooled, "has_image": has}


def cached(cache_dir: Path | None, key: str, compute: Callable[[], dict]) -> dict:
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        return load_file(path)
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in feats.items()}, tmp)
    tmp.replace(path)
    return feats


def text_features(enc: TextEncoder, ds: LabelledSet, cache_dir: Path | None) -> dict:
    key = f"text-{fingerprint(enc.model)}-{enc.max_length}-{_set_key(ds)}"
    return cached(cache_dir, key, lambda: encode_texts(enc, ds.texts, desc=Path(ds.name).name))


def image_features(enc: ImageEncoder, ds: LabelledSet, cache_dir: Path | None) -> dict:
    key = f"image-{fingerprint(enc)}-{enc.image_size}-{_set_key(ds)}"
    return cached(cache_dir, key, lambda: encode_images(enc, ds.images, desc=Path(ds.name).name))


def class_weights(labels: np.ndarray, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=len(LABELS)).astype(np.float64).clip(min=1)
    w = (counts.sum() / counts) ** (0.5 if mode == "sqrt" else 1.0)
    return torch.tensor(w / (w * counts / counts.sum()).sum(), dtype=torch.float32)


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


def text_layer_state(enc: TextEncoder, k: int) -> dict[str, torch.Tensor]:
    """State of the top k blocks only (what fine-tuning changed), keyed as in the HF model."""
    n = len(enc.layers())
    prefixes = tuple(f"encoder.layer.{i}." for i in range(n - k, n))
    return {name: t.detach().clone() for name, t in enc.model.state_dict().items() if name.startswith(prefixes)}


class Trainer:
    """One training run over fixed train/dev sets: a Bundle, optionally with the top text layers."""

    def __init__(
        self,
        cfg: TrainConfig,
        text_enc: TextEncoder,
        image_dim: int,
        image_size: int,
        train_text: dict,
        dev_text: dict,
        train_img: dict,
        dev_img: dict,
        y_train: np.ndarray,
        y_dev: np.ndarray,
    ):
        self.cfg = cfg
        self.text_enc = text_enc
        self.image_dim, self.image_size = image_dim, image_size
        seed_everything(cfg.seed)  # head initialisation depends on the seed only
        self.bundle = Bundle(cfg.head, text_enc.dim, image_dim, cfg.hidden, cfg.dropout, **cfg.head_kwargs)
        self.train_text, self.dev_text = train_text, dev_text
        self.train_img, self.dev_img = train_img, dev_img
        self.y_train, self.y_dev = torch.from_numpy(y_train), torch.from_numpy(y_dev)

    def _feats(self, text: dict, img: dict, idx: torch.Tensor, train: bool) -> tuple[Feats, torch.Tensor]:
        hidden = self.bundle.needs_hidden
        if self.cfg.finetune_layers:
            ids, am = text["input_ids"][idx], text["attention_mask"][idx]
            n = int(am.sum(1).max())
            self.text_enc.train(train)
            o = self.text_enc(ids[:, :n], am[:, :n])
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

    def predict_logits(self, text: dict, img: dict) -> dict[str, torch.Tensor]:
        self.bundle.eval()
        n = len(img["has_image"])
        outs: dict[str, list] = {"fused": [], "text": [], "image": []}
        with torch.inference_mode():
            for s in range(0, n, 64):
                idx = torch.arange(s, min(s + 64, n))
                f, has = self._feats(text, img, idx, train=False)
                for k, v in self.bundle(f, has).items():
                    outs[k].append(v)
        return {k: torch.cat(v) for k, v in outs.items()}

    def fit(self, progress: bool = True) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed)
        enc_params = set_trainable_text_layers(self.text_enc, cfg.finetune_layers)
        groups = [{"params": list(self.bundle.parameters()), "lr": cfg.lr_head}]
        if enc_params:
            groups.append({"params": enc_params, "lr": cfg.lr_encoder})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        weight = class_weights(self.y_train.numpy(), cfg.class_weight)
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
                f, has = self._feats(self.train_text, self.train_img, idx, train=True)
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
            m = classification_metrics(self.y_dev.numpy(), self.predict_logits(self.dev_text, self.dev_img)["fused"].argmax(-1).numpy())
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


def prepare(
    cfg: TrainConfig,
    train: LabelledSet,
    dev: LabelledSet,
    cache_dir: Path | None = DEFAULT_CACHE,
    text_enc: TextEncoder | None = None,
    image_enc: ImageEncoder | None = None,
) -> Trainer:
    """Load encoders, apply --text-init, build (cached) features for train and dev."""
    text_enc = text_enc or load_text_encoder(cfg.text_encoder, max_length=cfg.max_length)
    pre = None
    if cfg.pretrain_text:
        pre = pretrained_text(cfg, text_enc, cache_dir)
    image_enc = image_enc or load_image_encoder(cfg.image_encoder)
    image_enc.eval()
    tr_img, dv_img = image_features(image_enc, train, cache_dir), image_features(image_enc, dev, cache_dir)
    if cfg.finetune_layers:
        tr_txt, dv_txt = tokenize_all(text_enc, train.texts), tokenize_all(text_enc, dev.texts)
    else:
        tr_txt, dv_txt = text_features(text_enc, train, cache_dir), text_features(text_enc, dev, cache_dir)
    trainer = Trainer(cfg, text_enc, image_enc.dim, image_enc.image_size, tr_txt, dv_txt, tr_img, dv_img, train.labels, dev.labels)
    if pre is not None:  # same label set: the SemEval text classifier is a warm start for the text branch
        trainer.bundle.text.load_state_dict(pre["head"])
        trainer.pretrain_metrics = pre["metrics"]
    return trainer


def save_model(out: str | Path, cfg: TrainConfig, trainer: Trainer, extra: dict | None = None) -> Path:
    """config.json + heads.safetensors (+ text_layers.safetensors, fp16, only the fine-tuned blocks)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainer.bundle.state_dict().items()}, out / "heads.safetensors")
    text_layers = None
    if cfg.finetune_layers or cfg.pretrain_text:
        k = max(cfg.finetune_layers, cfg.pretrain_layers if cfg.pretrain_text else 0)
        state = {n: t.half().contiguous() for n, t in text_layer_state(trainer.text_enc, k).items()}
        save_file(state, out / "text_layers.safetensors")
        text_layers = "text_layers.safetensors"
    config = {
        "name": out.name if out.name != "default" else "mmsa-default-1",
        "labels": list(LABELS),
        "text_encoder": cfg.text_encoder,
        "image_encoder": cfg.image_encoder,
        "text_layers": text_layers,
        "max_length": cfg.max_length,
        "image_size": trainer.image_size,
        "head": cfg.head,
        "text_dim": trainer.text_enc.dim,
        "image_dim": trainer.image_dim,
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "head_kwargs": cfg.head_kwargs,
        "train_config": asdict(cfg),
        "pretrain_metrics": getattr(trainer, "pretrain_metrics", None),
        **(extra or {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def run(
    cfg: TrainConfig,
    data_dir: str | Path,
    out: str | Path | None,
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = True,
) -> dict:
    """Train on DATA/train.jsonl, early-stop on DATA/dev.jsonl, save to `out`; returns the run summary."""
    from mmsa.data import load_jsonl

    data_dir = Path(data_dir)
    train, dev = load_jsonl(data_dir / "train.jsonl"), load_jsonl(data_dir / "dev.jsonl")
    trainer = prepare(cfg, train, dev, cache_dir)
    fit = trainer.fit(progress=progress)
    logits = trainer.predict_logits(trainer.dev_text, trainer.dev_img)
    summary = {
        "dev": classification_metrics(dev.labels, logits["fused"].argmax(-1).numpy()),
        "dev_text_only": classification_metrics(dev.labels, logits["text"].argmax(-1).numpy()),
        "dev_image_only": classification_metrics(dev.labels, logits["image"].argmax(-1).numpy()),
        **fit,
    }
    if out is not None:
        save_model(out, cfg, trainer, {"dev_metrics": summary["dev"], "best_epoch": fit["best_epoch"]})
    return summary


def holdout_split(n: int, frac: float = 0.1, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, held-out) index split of a text-only set, independent of the training seed."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * frac))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _length_batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of similar length: far less padding for a CPU-bound encoder."""
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    batches = []
    chunk = batch_size * 50
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [torch.from_numpy(part[i : i + batch_size]) for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


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
    head = TextHead(enc.dim, 0, cfg.hidden, cfg.dropout)
    params = set_trainable_text_layers(enc, cfg.pretrain_layers)
    batch = 32
    opt = torch.optim.AdamW(
        [{"params": params, "lr": 5e-5}, {"params": list(head.parameters()), "lr": 1e-3}], weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    total = cfg.pretrain_epochs * ((len(tr_idx) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * max(0.0, 1 - s / total))
    weight = class_weights(ds.labels[tr_idx], cfg.class_weight)
    bar = tqdm(total=total, desc="pretrain text", disable=not progress)

    def run_batch(idx: torch.Tensor) -> torch.Tensor:
        n = int(am[idx].sum(1).max())
        o = enc(ids[idx, :n], am[idx, :n])
        return head(Feats(t_pooled=o.pooled, i_pooled=o.pooled))

    tr = torch.from_numpy(tr_idx)
    for _ in range(cfg.pretrain_epochs):
        enc.train()
        head.train()
        for b in _length_batches(lengths[tr_idx], batch, gen):
            idx = tr[b]
            loss = F.cross_entropy(run_batch(idx), y[idx], weight=weight)
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
    for p in enc.model.parameters():
        p.requires_grad = False
    return {"layers": text_layer_state(enc, cfg.pretrain_layers), "head": head.state_dict(), "metrics": metrics}


def pretrained_text(cfg: TrainConfig, enc: TextEncoder, cache_dir: Path | None) -> dict:
    """SemEval stage, cached on disk (keyed by encoder weights + data + settings), then applied to `enc`."""
    key = hashlib.sha256(
        json.dumps(
            [fingerprint(enc.model), str(Path(cfg.pretrain_text).resolve()), Path(cfg.pretrain_text).stat().st_size,
             cfg.pretrain_layers, cfg.pretrain_epochs, cfg.pretrain_max, cfg.hidden, cfg.class_weight, cfg.max_length]
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
        enc.model.load_state_dict(pre["layers"], strict=False)
        return pre
    # Seed 0 for this stage whatever the run's seed: all seeds of a comparison share one text pre-training.
    pre = pretrain_text_encoder(TrainConfig(**{**asdict(cfg), "seed": 0}), enc, cfg.pretrain_text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {**{f"layers.{k}": v for k, v in pre["layers"].items()}, **{f"head.{k}": v for k, v in pre["head"].items()}}
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        path.with_suffix(".json").write_text(json.dumps(pre["metrics"], indent=2))
    return pre


def _mean_sd(xs: list[float]) -> str:
    return f"{100 * np.mean(xs):.2f} ± {100 * np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.2f}"


def compare(
    data_dir: str | Path,
    heads: list[str],
    seeds: list[int],
    out: str | Path | None,
    cache_dir: Path | None = DEFAULT_CACHE,
    base: TrainConfig | None = None,
    progress: bool = True,
) -> str:
    """Every head x seed on the same cached frozen features; markdown table (+ JSON beside it).

    The table is rewritten after every run, so a long comparison can be read (or stopped) midway.
    Inference cost here is the head alone on cached features (batch 64); the encoders' cost is
    the same for every head and is reported on the model card.
    """
    from mmsa.data import load_jsonl

    base = base or TrainConfig()
    data_dir = Path(data_dir)
    train, dev = load_jsonl(data_dir / "train.jsonl"), load_jsonl(data_dir / "dev.jsonl")
    text_enc = load_text_encoder(base.text_encoder, max_length=base.max_length)
    image_enc = load_image_encoder(base.image_encoder)
    raw: dict[str, list[dict]] = {}
    table = ""
    for head in heads:
        for seed in seeds:
            cfg = TrainConfig(**{**asdict(base), "head": head, "seed": seed, "finetune_layers": 0})
            trainer = prepare(cfg, train, dev, cache_dir, text_enc=text_enc, image_enc=image_enc)
            fit = trainer.fit(progress=progress)
            start = time.perf_counter()
            logits = trainer.predict_logits(trainer.dev_text, trainer.dev_img)
            ms = 1000 * (time.perf_counter() - start) / len(dev)
            m = classification_metrics(dev.labels, logits["fused"].argmax(-1).numpy())
            raw.setdefault(head, []).append(
                {"seed": seed, **{k: m[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
                 "train_seconds": fit["train_seconds"], "best_epoch": fit["best_epoch"], "head_ms_per_post": ms}
            )
            if cfg.pretrain_text:  # the text stage changed the encoder in place: restore for the next run
                text_enc = load_text_encoder(base.text_encoder, max_length=base.max_length)
            table = _compare_table(raw, base, data_dir, len(dev), seeds)
            if out is not None:
                out = Path(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(table)
                out.with_suffix(".json").write_text(json.dumps({"config": asdict(base), "runs": raw}, indent=2) + "\n")
    return table


def _compare_table(raw: dict[str, list[dict]], base: TrainConfig, data_dir: Path, n_dev: int, seeds: list[int]) -> str:
    lines = [
        f"Dev set of {data_dir.name} (n={n_dev}), frozen encoders {base.text_encoder} + {base.image_encoder}"
        + (f", text side first fine-tuned on {Path(base.pretrain_text).name} (top {base.pretrain_layers} layers, "
           f"{base.pretrain_max} examples)" if base.pretrain_text else "")
        + f"; mean ± sd over seeds {seeds} (fewer where `seeds run` says so).",
        "",
        "| head | seeds run | accuracy | weighted F1 | macro F1 | train s | head ms/post | best epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for head, runs in raw.items():
        lines.append(
            f"| {head} | {len(runs)} | {_mean_sd([r['accuracy'] for r in runs])} | "
            f"{_mean_sd([r['weighted_f1'] for r in runs])} | {_mean_sd([r['macro_f1'] for r in runs])} | "
            f"{np.mean([r['train_seconds'] for r in runs]):.1f} | {np.mean([r['head_ms_per_post'] for r in runs]):.3f} | "
            f"{', '.join(str(r['best_epoch']) for r in runs)} |"
        )
    acc = {h: float(np.mean([r["accuracy"] for r in runs])) for h, runs in raw.items()}
    singles = {h: a for h, a in acc.items() if h in ("text", "image")}
    fused = {h: a for h, a in acc.items() if h not in ("text", "image")}
    if singles and fused:
        bs, bf = max(singles, key=singles.get), max(fused, key=fused.get)
        lines += ["", f"**Modal synergy:** best fusion head `{bf}` {100 * fused[bf]:.2f}% vs best single modality "
                  f"`{bs}` {100 * singles[bs]:.2f}% accuracy: {100 * (fused[bf] - singles[bs]):+.2f} points."]
    return "\n".join(lines) + "\n"
