"""Labelled data sets (JSONL or CSV rows with `text`, optional `image`, `label`) and image loading.

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
OPTIONAL_LABELS = ("text_label", "image_label")  # MVSA's per-modality labels; other sets have none
REPO_ROOT = Path(__file__).resolve().parent.parent
# The sets under the data folder (`resolve_data_dir`) that training and the selection protocols read by default.
MVSA = "mvsa_single"  # a folder: train.jsonl + dev.jsonl
SEMEVAL = "semeval2017_4a/train.jsonl"
TARGETED = "targeted"  # a folder of targeted sets (mmsa.targeted.TARGETED_SETS)


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """--data flag, else $MMSA_DATA, else ../shared/data next to the repo root."""
    return Path(data or os.environ.get("MMSA_DATA") or REPO_ROOT.parent / "shared" / "data")


@dataclass
class LabelledSet:
    """Parallel lists; `images` holds absolute paths (or http(s) URLs) or None for text-only rows."""

    name: str
    texts: list[str]
    images: list[Path | None]
    labels: np.ndarray  # int64 indices into LABELS
    targets: list[list[tuple[int, int]] | None] | None = None  # per row: the `target`'s spans, None without one
    left_out: int = 0  # rows of the file with nothing to read (load_jsonl's evaluation)

    def __len__(self) -> int:
        return len(self.texts)


# Other names a judge's labelled file may give a row's target and image: a brand stream's `brand` (as `mmsa score`
# reads a dump's), an aspect set's `aspect`; an image's `image_url` (an http(s) URL too) or `image_path`.
_ALIASES = {"target": ("brand", "aspect"), "image": ("image_url", "image_path")}


def read_rows(path: str | os.PathLike, evaluation: bool = False) -> list[dict]:
    """The rows of a labelled JSONL or CSV (`.gz` too), checked: the one reader of labelled files, so a bad row
    fails the same way wherever it is read. Every row's `label`, and its `text_label` / `image_label` when it has
    them, must be one of LABELS; a bad one, or a line that is not JSON, is an error naming the file and line (a
    silently dropped or relabelled row would move every figure trained or measured on the file). A row with
    neither text nor image is an error too. `evaluation`: a judge's file, read as `mmsa score` reads dumps: the
    target and image under their other names (_ALIASES), and a row with nothing to read kept (left out and
    counted: `mmsa score` labels no such post)."""
    path = Path(path)
    rows = []
    for line_no, row in _records(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: not a JSON object")
        row = _aliased(row) if evaluation else row
        for key in ("label", *(k for k in OPTIONAL_LABELS if row.get(k) not in (None, ""))):
            if row.get(key) not in LABEL_TO_ID:
                raise ValueError(f"{path}:{line_no}: {key} must be one of {LABELS}, got {row.get(key)!r}")
        for key in ("text", "target", "image"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ValueError(f"{path}:{line_no}: {key} must be a string, got {str(row[key])[:40]!r}")
        if not (row.get("text") or "").strip() and not row.get("image") and not evaluation:
            raise ValueError(f"{path}:{line_no}: neither text nor image: nothing to read")
        rows.append(_with_target_written(row))
    return rows


def _records(path: Path):
    """(line number, record) of a JSONL or CSV file, gzipped or not; a leading byte-order mark skipped, as
    mmsa.source reads dumps. CSV cells left empty are missing fields."""
    import csv
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            if path.name.lower().removesuffix(".gz").endswith(".csv"):
                reader = csv.DictReader(fh)
                for row in reader:
                    cells = {k: v for k, v in row.items() if k is not None and v not in ("", None)}
                    if cells:  # a spreadsheet's trailing ",,," rows are blank lines
                        yield reader.line_num, cells
                return
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not a JSON object ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}): labelled files are UTF-8 JSONL or "
                         "CSV, .gz too") from None
    except (OSError, EOFError) as e:  # a .gz file that is not gzip, or cut
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable ({e})") from None


def _aliased(row: dict) -> dict:
    """The row with `target` and `image` under their own names (_ALIASES); a one-element list is its element."""
    for name, others in _ALIASES.items():
        for other in others:
            if row.get(name) is None and row.get(other) is not None:
                value = row[other]
                row = {**row, name: value[0] if isinstance(value, list) and len(value) == 1 else value}
    return row


def _with_target_written(row: dict) -> dict:
    """A targeted row as target_spans reads it: a whole-number `target_start` as an int (21.0 from a table with
    gaps, "21"; anything else is searched for instead), and Dong et al.'s `$T$` placeholder replaced by the
    target it stands for, at that place."""
    start, target, text = row.get("target_start"), row.get("target"), row.get("text") or ""
    if start is not None and not isinstance(start, int):
        try:
            row["target_start"] = int(float(start)) if float(start).is_integer() else None
        except (TypeError, ValueError):
            row["target_start"] = None
    if target and "$T$" in text:
        row["target_start"], row["text"] = text.index("$T$"), text.replace("$T$", target)
    return row


def load_jsonl(path: str | os.PathLike, with_images: bool = True, evaluation: bool = False) -> LabelledSet:
    """Read a labelled file (`read_rows`); `image` paths are relative to the file's folder. `evaluation`: a judge's
    file (`read_rows`): an http(s) image URL stays one, and rows with nothing to read are left out and counted
    (`left_out`)."""
    path = Path(path)
    rows = read_rows(path, evaluation)
    kept = [r for r in rows if (r.get("text") or "").strip() or r.get("image")]
    images = [_image_at(path, r["image"], evaluation) if with_images and r.get("image") else None for r in kept]
    targets = [target_spans(r) if r.get("target") is not None else None for r in kept]
    return LabelledSet(str(path), [r.get("text") or "" for r in kept], images,
                       np.asarray([LABEL_TO_ID[r["label"]] for r in kept], dtype=np.int64),
                       targets if any(t is not None for t in targets) else None, left_out=len(rows) - len(kept))


def _image_at(path: Path, image: str, urls: bool) -> Path | str:
    return image if urls and image.lower().startswith(("http://", "https://")) else path.parent / image


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
