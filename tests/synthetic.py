"""Synthetic labelled posts (text + image) and tiny random encoders, so the whole train/evaluate
path runs in seconds in tests without the real backbones or data.

The signal is learnable but noisy: a sentiment word in the text and a colour tint in the image,
each present in most (not all) posts, so fusion has something to add over either modality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mmsa.schema import LABELS

CUE_WORDS = {
    "positive": ["great", "love", "happy", "win"],
    "neutral": ["report", "meeting", "update", "schedule"],
    "negative": ["awful", "hate", "sad", "lost"],
}
FILLER = ["the", "a", "today", "city", "photo", "we", "it", "was", "this", "our", "team", "day", "new", "with"]
TINTS = {"positive": (200, 120, 60), "neutral": (128, 128, 128), "negative": (40, 60, 160)}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *(w for ws in CUE_WORDS.values() for w in ws)]


def make_posts(n: int, rng: np.random.Generator, signal: float = 0.8) -> list[tuple[str, np.ndarray, str, str, str]]:
    """(text, uint8 image 32x32, label, text_label, image_label); labels skewed like MVSA (positive-heavy).
    A modality without its cue is labelled neutral, as an MVSA annotator would label it."""
    posts = []
    for _ in range(n):
        label = LABELS[rng.choice(3, p=[0.55, 0.15, 0.30])]
        words = list(rng.choice(FILLER, size=rng.integers(3, 9)))
        text_cue = rng.random() < signal
        if text_cue:
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(CUE_WORDS[label])))
        image_cue = rng.random() < signal
        tint = TINTS[label] if image_cue else TINTS["neutral"]
        img = np.clip(rng.normal(0, 40, (32, 32, 3)) + np.array(tint), 0, 255).astype(np.uint8)
        posts.append((" ".join(words), img, label, label if text_cue else "neutral", label if image_cue else "neutral"))
    return posts


def write_dataset(
    out: str | Path, n_train: int = 160, n_dev: int = 80, seed: int = 0, text_only_every: int = 0
) -> Path:
    """Write OUT/{train,dev}.jsonl + OUT/images/*.png; every `text_only_every`-th dev row has no image."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for i, (text, img, label, text_label, image_label) in enumerate(make_posts(n, rng)):
                row = {"id": f"{split}-{i}", "text": text, "label": label, "text_label": text_label, "image_label": image_label}
                if not (split == "dev" and text_only_every and i % text_only_every == 0):
                    Image.fromarray(img).save(out / "images" / f"{split}-{i}.png")
                    row["image"] = f"images/{split}-{i}.png"
                fh.write(json.dumps(row) + "\n")
    return out


def write_targeted(out: str | Path, texts: int = 20, seed: int = 0) -> Path:
    """OUT/<set>/<split>.jsonl for every file of mmsa.targeted.TARGETED_SETS: each text names two targets (words
    of FILLER) with a cue word after each, and has one row per target labelled by that target's cue."""
    from mmsa.targeted import TARGETED_SETS

    out = Path(out)
    rng = np.random.default_rng(seed)
    targets = ["city", "team", "photo", "day"]
    for name, splits in TARGETED_SETS.items():
        for split in splits:
            rows = []
            for _ in range(texts):
                (a, b), (la, lb) = rng.choice(targets, 2, replace=False), rng.choice(LABELS, 2)
                text = f"the {a} {rng.choice(CUE_WORDS[la])} with our {b} {rng.choice(CUE_WORDS[lb])}"
                rows += [{"text": text, "target": str(a), "label": str(la)}, {"text": text, "target": str(b), "label": str(lb)}]
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def tiny_text_encoder(folder: str | Path, hidden: int = 24, layers: int = 2, arch: str = "bert",
                      intermediate: int | None = None) -> Path:
    """A randomly initialised tiny BERT, or MPNet (`arch="mpnet"`: the large tier's architecture, its special
    tokens first as in all-mpnet-base-v2's vocabulary), + its word-piece tokenizer over VOCAB, saved as an HF
    folder. `intermediate`: the feed-forward width (default 2 x hidden; the target head copies a block whose
    width is 4 x hidden, as in BERT)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, MPNetConfig, MPNetModel, MPNetTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mpnet = arch == "mpnet"
    vocab = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *VOCAB[5:]] if mpnet else VOCAB
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (MPNetTokenizerFast if mpnet else BertTokenizerFast)(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    Config, Model = (MPNetConfig, MPNetModel) if mpnet else (BertConfig, BertModel)
    # MPNet numbers positions from its pad id + 1, as RoBERTa does: 64 tokens need 66 positions.
    cfg = Config(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                 intermediate_size=intermediate or 2 * hidden, max_position_embeddings=66 if mpnet else 64)
    Model(cfg).save_pretrained(folder)
    return folder


def tiny_vit(folder: str | Path, hidden: int = 24, image_size: int = 32) -> Path:
    """A randomly initialised tiny ViT (8x8 patches) saved as an HF folder."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
        image_size=image_size, patch_size=8,
    )
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return Path(folder)
