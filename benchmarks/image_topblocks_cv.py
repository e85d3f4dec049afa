"""Does fine-tuning the image encoder's top blocks on MVSA's images beat its frozen pooled vector (issue 35)?

EfficientNet-Lite2 (the default's and the large tier's image side) at 260 px, image-only, post labels, MVSA-Single
train+dev (n=4,061), 5 stratified folds (`mmsa.train.fold_ids`, seed 0). In each fold, side by side:
- frozen: logistic regression on the frozen pooled vector (`mmsa.stack.fit_lr`, as `mmsa compare`'s `image` row);
- tuned: blocks FIRST..20 + the head convolution copied and trained with a new linear layer (AdamW, 1e-4 for the
  blocks, 1e-3 for the layer, batch 32, EPOCHS epochs, feature maps mirrored at random) from the cached input of
  block FIRST, computed once.

    .venv/bin/python benchmarks/image_topblocks_cv.py --first 20 --epochs 4
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmsa.data import LABEL_TO_ID, load_image, resolve_data_dir
from mmsa.encoders import load_image_encoder
from mmsa.features import FEATURES_DIR
from mmsa.stack import fit_lr
from mmsa.train import fold_ids

FIRST_CACHED = 16  # block inputs cached once from the images; a later FIRST runs the blocks between


def block_inputs(enc, rows: list[dict], folder: Path, first: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(input of block `first` (N, C, h, w) fp16, frozen pooled vectors (N, 1280)), cached in `cache`."""
    net = enc.backbone.net
    acts16, pooled = cache / f"acts{FIRST_CACHED}.npy", cache / "pooled.npy"
    if not acts16.exists():
        cache.mkdir(parents=True, exist_ok=True)
        a, p = [], []
        with torch.inference_mode():
            for s in range(0, len(rows), 32):
                h = enc.preprocess([load_image(folder / r["image"], enc.image_size) for r in rows[s : s + 32]])
                h = net._swish(net._bn0(net._conv_stem(h)))
                for i, block in enumerate(net._blocks):
                    if i == FIRST_CACHED:
                        a.append(h.half().numpy())
                    h = block(h)
                p.append(net._swish(net._bn1(net._conv_head(h))).mean((2, 3)).numpy())
        np.save(acts16, np.concatenate(a))
        np.save(pooled, np.concatenate(p))
    acts = np.load(acts16)
    if first > FIRST_CACHED:
        out = []
        with torch.inference_mode():
            for s in range(0, len(acts), 64):
                h = torch.from_numpy(acts[s : s + 64]).float()
                for block in net._blocks[FIRST_CACHED:first]:
                    h = block(h)
                out.append(h.half().numpy())
        acts = np.concatenate(out)
    return acts, np.load(pooled)


class TopBlocks(nn.Module):
    def __init__(self, net: nn.Module, first: int):
        super().__init__()
        self.swish = net._swish
        self.blocks = copy.deepcopy(net._blocks[first:])
        self.conv, self.bn = copy.deepcopy(net._conv_head), copy.deepcopy(net._bn1)
        self.out = nn.Linear(self.conv.out_channels, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        h = self.swish(self.bn(self.conv(h))).mean((2, 3))
        return self.out(nn.functional.dropout(h, 0.2, self.training))


def tuned_fold(net, acts: torch.Tensor, y: np.ndarray, tr: np.ndarray, te: np.ndarray, first: int, epochs: int,
               fold: int) -> np.ndarray:
    torch.manual_seed(0)
    m = TopBlocks(net, first)
    opt = torch.optim.AdamW([{"params": [p for n, p in m.named_parameters() if not n.startswith("out")], "lr": 1e-4},
                             {"params": m.out.parameters(), "lr": 1e-3}], weight_decay=0.01)
    for epoch in range(epochs):
        m.train()
        order = np.random.default_rng(epoch + 10 * fold).permutation(tr)
        for s in range(0, len(order), 32):
            batch = order[s : s + 32]
            x = acts[batch].float()
            if np.random.default_rng(s).random() < 0.5:
                x = x.flip(3)
            loss = nn.functional.cross_entropy(m(x), torch.from_numpy(y[batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        return torch.cat([m(acts[te[s : s + 128]].float()) for s in range(0, len(te), 128)]).argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=20, help="the first block trained (16..20; 20: the last one)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=FEATURES_DIR / "image-topblocks", help="block inputs, computed once")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = resolve_data_dir() / "mvsa_single"
    rows = [json.loads(line) for name in ("train.jsonl", "dev.jsonl") for line in open(folder / name)]
    y = np.array([LABEL_TO_ID[r["label"]] for r in rows])
    enc = load_image_encoder("efficientnet-lite2").eval()
    acts, pooled = block_inputs(enc, rows, folder, args.first, args.cache)
    acts = torch.from_numpy(acts)
    fold = fold_ids(y, args.folds, 0)
    frozen, tuned = [], []
    t0 = time.perf_counter()
    for f in range(args.folds):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        frozen.append(float((fit_lr(pooled[tr], y[tr], seed=0).predict(pooled[te]) == y[te]).mean()))
        tuned.append(float((tuned_fold(enc.backbone.net, acts, y, tr, te, args.first, args.epochs, f) == y[te]).mean()))
        print(f"fold {f}: frozen {100 * frozen[-1]:.2f}  tuned {100 * tuned[-1]:.2f}", flush=True)
    diff = 100 * (np.array(tuned) - np.array(frozen))
    print(f"blocks {args.first}..20, {args.epochs} epochs, {args.folds} folds, {time.perf_counter() - t0:.0f} s: "
          f"frozen {100 * np.mean(frozen):.2f}, tuned {100 * np.mean(tuned):.2f}, paired difference "
          f"{diff.mean():+.2f} (sd {diff.std(ddof=1):.2f}; per fold {', '.join(f'{d:+.1f}' for d in diff)})")


if __name__ == "__main__":
    main()
