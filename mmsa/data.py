"""Labelled data sets (JSONL rows with `text`, optional `image`, `label`) and image loading.

Images go through mmsa.images.decode, the same preprocessing the fetch stage applies when scoring,
so that training and scored images look alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsa.images import decode
from mmsa.schema import LABELS

LABEL_TO_ID = {name: i for i, name in enumerate(LABELS)}
REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """--data flag, else $MMSA_DATA, else ../shared/data next to the repo root."""
    return Path(data or os.environ.get("MMSA_DATA") or REPO_ROOT.parent / "shared" / "data")


@dataclass
class LabelledSet:
    """Parallel lists; `images` holds absolute paths or None for text-only rows."""

    name: str
    texts: list[str]
    images: list[Path | None]
    labels: np.ndarray  # int64 indices into LABELS
    targets: list[list[tuple[int, int]] | None] | None = None  # per row: the `target`'s spans, None without one

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "LabelledSet":
        return LabelledSet(
            name or self.name,
            [self.texts[i] for i in idx],
            [self.images[i] for i in idx],
            self.labels[idx],
            None if self.targets is None else [self.targets[i] for i in idx],
        )


def load_jsonl(path: str | os.PathLike, with_images: bool = True) -> LabelledSet:
    """Read a labelled JSONL; `image` paths are relative to the file's folder."""
    path = Path(path)
    texts, images, labels, targets = [], [], [], []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("label") not in LABEL_TO_ID:
                raise ValueError(f"{path}:{line_no}: label must be one of {LABELS}, got {row.get('label')!r}")
            texts.append(row.get("text") or "")
            img = row.get("image") if with_images else None
            images.append((path.parent / img) if img else None)
            labels.append(LABEL_TO_ID[row["label"]])
            targets.append(target_spans(row) if row.get("target") else None)
    return LabelledSet(str(path), texts, images, np.asarray(labels, dtype=np.int64),
                       targets if any(t is not None for t in targets) else None)


def target_spans(row: dict) -> list[tuple[int, int]]:
    """A labelled row's `target` spans in its text: at `target_start` when the row gives it (a tweet can
    name the same string twice, and the label is toward one), else every occurrence."""
    from mmsa.brands import find_spans

    text, target, start = row.get("text") or "", row["target"], row.get("target_start")
    if start is not None and text[start : start + len(target)].lower() == target.lower():
        return [(start, start + len(target))]
    return find_spans(text, target)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """uint8 RGB size x size, exactly as `mmsa fetch` would preprocess the same file."""
    return decode.preprocess(Path(path).read_bytes(), size, max_pixels=decode.MAX_PIXELS)
