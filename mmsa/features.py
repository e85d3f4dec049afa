"""Pooled encoder features of a labelled set, cached on disk: what the linear heads of `mmsa.stack`
train on and what `mmsa compare` cross-validates over.

Only the pooled vectors are kept (the linear heads read nothing else), so the 49k SemEval tweets cost
73 MB rather than the hidden-state sequences' gigabytes. The key follows the encoders' weights
(`encoder_key`) and the data file's bytes, never a reused name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmsa.data import LABEL_TO_ID, load_image
from mmsa.files import atomic_path, default_cache_dir

FEATURES_DIR = default_cache_dir() / "features"


@dataclass
class PooledSet:
    """Rows of one labelled JSONL: pooled text (N,Dt), pooled image (N,Di; zeros without an image) and the
    labels (int indices into LABELS; -1 where the file has no such column)."""

    t: np.ndarray
    i: np.ndarray
    has_image: np.ndarray
    label: np.ndarray
    text_label: np.ndarray
    image_label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def read_rows(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


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
    """Changes whenever the encoders' output may: backbones' files, fine-tuned text layers, sizes (the heads,
    which a retrained model changes, are not part of it)."""
    cfg = model.config
    h = hashlib.sha256(json.dumps([cfg["text_encoder"], cfg["image_encoder"], cfg["max_length"], cfg["image_size"],
                                   model.source_key()]).encode())
    if cfg.get("text_layers"):
        h.update((model.folder / cfg["text_layers"]).read_bytes())
    return h.hexdigest()[:16]


def pooled_features(model, path: str | Path, with_images: bool = True, cache_dir: Path | None = FEATURES_DIR) -> PooledSet:
    """PooledSet of a labelled JSONL (`image` relative to its folder) under `model`'s encoders, cached."""
    path = Path(path)
    rows = read_rows(path)
    h = hashlib.sha256(encoder_key(model).encode() + str(with_images).encode())
    h.update(path.read_bytes())
    cache = Path(cache_dir) / f"pooled-{h.hexdigest()[:16]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        z = np.load(cache)
        t, i = z["t"], z["i"]
    else:
        t = encode_pooled_texts(model.text_encoder, [r.get("text") or "" for r in rows])
        paths = [path.parent / r["image"] if with_images and r.get("image") else None for r in rows]
        i = np.zeros((len(rows), model.image_dim), np.float32)
        if any(p is not None for p in paths):
            i = encode_pooled_images(model.image_encoder, paths)
        if cache is not None:
            with atomic_path(cache) as tmp, open(tmp, "wb") as fh:  # a handle: np.savez would append .npz to a name
                np.savez(fh, t=t, i=i)
    has = np.array([bool(with_images and r.get("image")) for r in rows])
    return PooledSet(t, i, has, _labels(rows, "label"), _labels(rows, "text_label"), _labels(rows, "image_label"))
