"""Encoder features of labelled sets, cached on disk: the one feature cache of training.

Two kinds, both kept through `cached` under FEATURES_DIR: pooled vectors (`pooled_features`), what the
linear heads of `mmsa.stack` train on and `mmsa compare` cross-validates over, so the 49k SemEval tweets
cost 73 MB rather than the hidden-state sequences' gigabytes; and the padded hidden-state sequences
(`text_features`, `image_features`) that the paper's fusion heads of `mmsa.train` read. Keys follow the
encoders' weights (`encoder_key`, `fingerprint`) and the data, never a reused name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmsa.data import LABEL_TO_ID, LabelledSet, load_image, read_rows
from mmsa.encoders import TOKENIZATION_VERSION, ImageEncoder, TextEncoder
from mmsa.files import atomic_path, default_cache_dir
from mmsa.images import decode as imaging

FEATURES_DIR = default_cache_dir() / "features"


@dataclass
class PooledSet:
    """Rows of one labelled JSONL: pooled text (N,Dt), pooled image (N,Di; zeros without an image) and the
    labels (int indices into LABELS; -1 where the file has no such column)."""

    text: np.ndarray
    image: np.ndarray
    has_image: np.ndarray
    label: np.ndarray
    text_label: np.ndarray
    image_label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def cached(cache_dir: Path | None, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`compute()`'s arrays, kept as CACHE_DIR/key.npz: read back when the file is there, else computed and
    written whole (atomically: a killed run leaves no half file to read later). `cache_dir` None: no cache."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {name: z[name] for name in z.files}
    arrays = compute()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.savez would append .npz to a name
        np.savez(fh, **arrays)
    return arrays


def _labels(rows: list[dict], key: str) -> np.ndarray:
    return np.array([LABEL_TO_ID.get(r.get(key), -1) for r in rows], dtype=np.int64)


@torch.inference_mode()
def encode_pooled_texts(enc, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Pooled text vectors in input order; batches of similar length waste little on padding."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), enc.dim), np.float32)
    for s in tqdm(range(0, len(texts), batch_size), desc="encode text", leave=False):
        idx = order[s : s + batch_size]
        out[idx] = enc.encode([texts[i] for i in idx]).pooled.float().numpy()
    return out


@torch.inference_mode()
def encode_pooled_images(enc, paths: list[Path | None], batch_size: int = 32, flip: bool = False) -> np.ndarray:
    """Pooled image vectors (zeros for rows without an image); `flip` mirrors each image first."""
    out = np.zeros((len(paths), enc.dim), np.float32)
    idx = [k for k, p in enumerate(paths) if p is not None]
    for s in tqdm(range(0, len(idx), batch_size), desc="encode image", leave=False):
        chunk = idx[s : s + batch_size]
        ims = [load_image(paths[k], enc.image_size) for k in chunk]
        if flip:
            ims = [np.ascontiguousarray(im[:, ::-1]) for im in ims]
        out[chunk] = enc.encode(ims).pooled.float().numpy()
    return out


def encoder_key(model) -> str:
    """Changes whenever the encoders' output may: backbones' files, fine-tuned text layers, sizes, tokenization
    (the heads, which a retrained model changes, are not part of it)."""
    cfg = model.config
    h = hashlib.sha256(json.dumps([cfg["text_encoder"], cfg["image_encoder"], cfg["max_length"], cfg["image_size"],
                                   model.source_key(), TOKENIZATION_VERSION]).encode())
    if cfg.get("text_layers"):
        h.update((model.folder / cfg["text_layers"]).read_bytes())
    return h.hexdigest()[:16]


def pooled_features(model, path: str | Path, with_images: bool = True, cache_dir: Path | None = FEATURES_DIR) -> PooledSet:
    """PooledSet of a labelled JSONL (`image` relative to its folder) under `model`'s encoders, cached."""
    path = Path(path)
    rows = read_rows(path)
    h = hashlib.sha256(encoder_key(model).encode() + str(with_images).encode())
    h.update(path.read_bytes())
    paths = [path.parent / r["image"] if with_images and r.get("image") else None for r in rows]

    def encode() -> dict[str, np.ndarray]:
        t = encode_pooled_texts(model.text_encoder, [r.get("text") or "" for r in rows])
        i = np.zeros((len(rows), model.image_dim), np.float32)
        if any(p is not None for p in paths):
            i = encode_pooled_images(model.image_encoder, paths)
        return {"t": t, "i": i}  # the arrays' names in the .npz files already cached

    z = cached(cache_dir, f"pooled-{h.hexdigest()[:16]}", encode)
    return PooledSet(z["t"], z["i"], np.array([p is not None for p in paths]), _labels(rows, "label"),
                     _labels(rows, "text_label"), _labels(rows, "image_label"))


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


def _cached_tensors(cache_dir: Path | None, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`cached` for a dict of tensors: stored as their numpy arrays, handed back as tensors."""
    arrays = cached(cache_dir, key, lambda: {k: v.numpy() for k, v in compute().items()})
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def text_features(enc: TextEncoder, ds: LabelledSet, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """`encode_texts` of a set's texts, cached by the encoder's weights and the set."""
    key = f"text-{fingerprint(enc.model)}-{enc.max_length}-t{TOKENIZATION_VERSION}-{_set_key(ds)}"
    return _cached_tensors(cache_dir, key, lambda: encode_texts(enc, ds.texts, desc=Path(ds.name).name))


def image_features(enc: ImageEncoder, ds: LabelledSet, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """`encode_images` of a set's images, cached by the encoder's weights, the preprocessing's version and the set."""
    key = f"image-{fingerprint(enc)}-{enc.image_size}-v{imaging.VERSION}-{_set_key(ds)}"
    return _cached_tensors(cache_dir, key, lambda: encode_images(enc, ds.images, desc=Path(ds.name).name))
