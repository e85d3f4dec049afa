"""The scoring model's weights: `load_model(...)` gives the encoders and head bundle that
`mmsa.infer.Engine` runs (the one prediction path).

A model folder holds config.json and safetensors only (never pickles): the head bundle and,
if the text encoder was fine-tuned, just its changed top layers (or their low-rank updates), overlaid on the
packaged backbone. A folder may name a model whose target head scores the brands its posts name
(`target_model`: the large tier borrows the default's), blended with a head of its own if it has one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmsa.encoders import encoder_files, load_image_encoder, load_text_encoder, overlay_text_layers
from mmsa.faults import PermanentError
from mmsa.heads import TargetHead, from_config

MODELS_DIR = Path(__file__).resolve().parent / "models"
# The languages (ISO 639-1) a model covers when its config.json lists none: every recipe here trains on
# English data (SemEval, MVSA), and so did every model folder written before the list existed.
DEFAULT_LANGUAGES = ("en",)


@dataclass
class Prediction:
    probs: np.ndarray  # (N,3) fused; rows without an image = the text-only probs
    text_probs: np.ndarray  # (N,3) text branch alone
    image_probs: np.ndarray  # (N,3) image branch alone; NaN rows where there was no image
    queued_s: float = 0.0  # seconds the call waited for other callers of the engine
    target_probs: list[np.ndarray] | None = None  # per row, (its targets, 3) text probabilities toward each target


def blend_targets(lent: np.ndarray, own: np.ndarray, weight: float) -> np.ndarray:
    """(k, 3) probabilities toward a post's targets from a borrowed head's and the model's own head's: their
    geometric mean with `weight` on the own head's (two heads over different encoders err differently)."""
    logp = (1 - weight) * np.log(np.clip(lent, 1e-9, 1.0)) + weight * np.log(np.clip(own, 1e-9, 1.0))
    p = np.exp(logp - logp.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


class SentimentModel:
    """Text encoder + image encoder + the head module of config.json (mmsa.heads.from_config), fp32, eval mode; `mmsa.infer.Engine`
    runs them. The encoders load on first use: an engine whose ONNX graphs are cached never needs them
    (nor the imports of transformers' models, about 5 s of CPU)."""

    def __init__(self, folder: Path, device: str = "cpu"):
        self.folder = folder
        self.device = torch.device(device)
        try:  # a folder that does not read whole fails the same way on every retry
            cfg = json.loads((folder / "config.json").read_text())
            self.config = cfg
            self.max_length = int(cfg["max_length"])
            self.image_size = int(cfg["image_size"])
            self.image_dim = int(cfg["image_dim"])
            # Posts in other languages are not scored (mmsa.pipeline): a model guesses outside what it learnt.
            self.languages = frozenset(cfg.get("languages", DEFAULT_LANGUAGES))
            self.bundle = from_config(cfg)
            self.bundle.load_state_dict(load_file(str(folder / "heads.safetensors")))
            weight_files = [folder / "heads.safetensors"] + [folder / cfg[k] for k in ("text_layers", "target_head") if cfg.get(k)]
            # The sentiment toward each brand a post names (mmsa.heads.TargetHead); None: the post's own.
            self.target_head = None
            if cfg.get("target_head"):
                self.target_head = TargetHead(int(cfg["text_dim"]), int(cfg["target_blocks"]),
                                              position_buckets=int(cfg.get("target_position_buckets", 0)))
                self.target_head.load_state_dict({k: v.float() for k, v in load_file(str(folder / cfg["target_head"])).items()})
                self.target_head.to(self.device).eval()
            h = hashlib.sha256()
            for path in weight_files:
                h.update(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            raise PermanentError(f"model folder {folder} is damaged or incomplete ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}): restore it (reinstall mmsa, or train it again) or pass --model "
                                 "with another") from exc
        self.bundle.to(self.device).eval()
        # The model whose target head scores the brands a post names: this one, or the one config.json's
        # `target_model` names (a model name or folder: a tier without its own head borrows another's, as the
        # large tier borrows the default's), or None (every brand gets the post's label).
        self.target_model = self if self.target_head is not None else None
        # The weight of this model's own head, if any, in its blend with a borrowed one (blend_targets), chosen
        # out of fold (mmsa.targeted.borrowed).
        self.target_blend = float(cfg.get("target_blend", 0.0)) if self.target_head is not None else 0.0
        if cfg.get("target_model"):
            lender = resolve_model_dir(cfg["target_model"])
            # Checked before loading it: a lender that borrows too could lead the loading round a loop.
            lent = json.loads((lender / "config.json").read_text())
            if not lent.get("target_head") or lent.get("target_model"):
                raise PermanentError(f"{folder}/config.json: target_model {cfg['target_model']!r} has no target head "
                                     "of its own to lend (or borrows one itself): name a model that has one (e.g. default)")
            self.target_model = load_model(lender, device)
            h.update(f"{self.target_model.version}^{self.target_blend}".encode())
        # Stable id stored with every scored row: model name + hash of the weights this folder adds (and of
        # the model it borrows its target head from).
        self.version = f"{cfg['name']}+{h.hexdigest()[:8]}"
        self._encoders = None
        self._lock = threading.Lock()

    @property
    def text_encoder(self):
        return self._load_encoders()[0]

    @property
    def image_encoder(self):
        return self._load_encoders()[1]

    def _load_encoders(self):
        with self._lock:
            if self._encoders is None:
                cfg = self.config
                text = load_text_encoder(cfg["text_encoder"], max_length=self.max_length)
                if cfg.get("text_layers"):
                    unexpected = overlay_text_layers(text.model, load_file(str(self.folder / cfg["text_layers"])))
                    if unexpected:
                        raise ValueError(f"{self.folder / cfg['text_layers']}: keys not in {cfg['text_encoder']}: {unexpected[:3]}")
                image = load_image_encoder(cfg["image_encoder"])
                if image.image_size != self.image_size:
                    raise ValueError(f"{self.folder}: image_size {self.image_size} in config.json, {image.image_size} in the encoder")
                self._encoders = tuple(m.to(self.device).eval() for m in (text, image))
            return self._encoders

    @property
    def target_tap(self) -> int | None:
        """The encoder states the target head reads (a `hidden_states` index: the input of its blocks), or None."""
        return None if self.target_head is None else -(len(self.target_head.blocks) + 1)

    def source_key(self) -> str:
        """Changes whenever the backbones' files do: a hash of the name and contents of every file the
        encoders load from, found without loading them (this folder's own weights, the fine-tuned text layers
        among them, are in `version`). Contents, not paths, so that two installs share caches."""
        h = hashlib.sha256(json.dumps([self.config["text_encoder"], self.config["image_encoder"]]).encode())
        for path in encoder_files(self.config["text_encoder"], self.config["image_encoder"]):
            h.update(f"{path.name}|{file_digest(path)}".encode())
        return h.hexdigest()[:16]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for the process: a backbone is read once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as fh:
            _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _DIGESTS[key]


_CACHE: dict[tuple[str, str], SentimentModel] = {}
_LOCK = threading.RLock()  # re-entered: a model loads the model it borrows its target head from


def load_model(name_or_path: str | Path = "default", device: str | None = None) -> SentimentModel:
    """Cached per (folder, device) for the process; "default" = the shipped mmsa/models/default."""
    folder = resolve_model_dir(name_or_path)
    dev = device or "cpu"
    key = (str(folder), dev)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = SentimentModel(folder, dev)
        return _CACHE[key]


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A model folder: a path holding config.json, else a name under mmsa/models/."""
    p = Path(name_or_path)
    if (p / "config.json").exists():
        return p.resolve()
    named = MODELS_DIR / str(name_or_path)
    if (named / "config.json").exists():
        return named
    raise FileNotFoundError(f"no model folder {name_or_path!r} (looked in . and {MODELS_DIR})")
