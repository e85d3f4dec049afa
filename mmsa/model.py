"""The scoring model's weights: `load_model(...)` gives the encoders and head bundle that
`mmsa.infer.Engine` runs (the one prediction path).

A model folder holds config.json and safetensors only (never pickles): the head bundle and,
if the text encoder was fine-tuned, just its changed top layers, overlaid on the packaged backbone.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mmsa.encoders import load_image_encoder, load_text_encoder
from mmsa.heads import Bundle, Ensemble
from mmsa.registry import resolve_model_dir


@dataclass
class Prediction:
    probs: np.ndarray  # (N,3) fused; rows without an image = the text-only probs
    text_probs: np.ndarray  # (N,3) text branch alone
    image_probs: np.ndarray  # (N,3) image branch alone; NaN rows where there was no image


class SentimentModel:
    """Text encoder + image encoder + an Ensemble of head bundles, fp32, eval mode; `mmsa.infer.Engine`
    runs them."""

    def __init__(self, folder: Path, device: str = "cpu"):
        self.folder = folder
        cfg = json.loads((folder / "config.json").read_text())
        self.config = cfg
        self.device = torch.device(device)
        self.text_encoder = load_text_encoder(cfg["text_encoder"], max_length=cfg["max_length"])
        weight_files = ["heads.safetensors"]
        if cfg.get("text_layers"):
            state = {k: v.float() for k, v in load_file(str(folder / cfg["text_layers"])).items()}
            unexpected = self.text_encoder.model.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"{folder / cfg['text_layers']}: keys not in {cfg['text_encoder']}: {unexpected[:3]}")
            weight_files.append(cfg["text_layers"])
        self.image_encoder = load_image_encoder(cfg["image_encoder"])
        self.image_size = int(self.image_encoder.image_size)
        self.bundle = Ensemble([
            Bundle(cfg["head"], cfg["text_dim"], cfg["image_dim"], cfg["hidden"], cfg["dropout"], **cfg.get("head_kwargs", {}))
            for _ in range(cfg["members"])
        ])
        self.bundle.load_state_dict(load_file(str(folder / "heads.safetensors")))
        h = hashlib.sha256()
        for name in weight_files:
            h.update((folder / name).read_bytes())
        # Stable id stored with every scored row: model name + hash of the weights this folder adds.
        self.version = f"{cfg['name']}+{h.hexdigest()[:8]}"
        for m in (self.text_encoder, self.image_encoder, self.bundle):
            m.to(self.device).eval()


_CACHE: dict[tuple[str, str], SentimentModel] = {}
_LOCK = threading.Lock()


def load_model(name_or_path: str | Path = "default", device: str | None = None) -> SentimentModel:
    """Cached per (folder, device) for the process; "default" = the shipped mmsa/models/default."""
    folder = resolve_model_dir(name_or_path)
    dev = device or "cpu"
    key = (str(folder), dev)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentimentModel(folder, dev)
        return _CACHE[key]
