"""The shipped model's recipe, end to end: the one function that builds it (`train_default`), which `mmsa train`,
the train flow and its deployment all call, so a retrain by the deployment and one by hand build the same model.

The recipe: the linear heads of `mmsa.stack` (the fusion `mmsa compare` chose, `stack.DEFAULT_RECIPE`, with
the general text head's class weighting `stack.DEFAULT_WEIGHT`) fitted over a base model's encoders, then the
target head of `mmsa.targeted` (sentiment toward each brand), which reads the new folder's own encoders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmsa import files, stack
from mmsa.data import MVSA, SEMEVAL, TARGETED, resolve_data_dir
from mmsa.features import FEATURES_DIR
from mmsa.targeted import add_target_head, borrow_config, write_target_head

NO_TARGET_HEAD = "none"  # as `targeted`: the stacked heads alone, without the target head
BORROW = "borrow:"  # as `targeted`, "borrow:MODEL": MODEL's head scores the brands (config target_model), blended with a linear one of its own
COPY = "copy:"  # as `targeted`, "copy:MODEL": MODEL's own head, copied as it is (it reads encoder states both models share)
# config.json entries a fitted target head brings (add_target_head): the head, its fit, out-of-fold figures, and the
# quantification statistics of its calibrated out-of-fold probabilities.
TARGET_ENTRIES = ("target_head", "target_blocks", "target_position_buckets", "target_train", "target_out_of_fold",
                  "quantification")


def train_default(out: str | Path, mvsa: str | Path | None = None, semeval: str | Path | None = None,
                  targeted: str | Path | None = None, base: str | Path = "default", weight: str = stack.DEFAULT_WEIGHT,
                  recipe: str = stack.DEFAULT_RECIPE, name: str | None = None, seed: int = 0,
                  cache_dir: str | Path | None = None) -> dict:
    """Build the shipped recipe into the model folder `out` and return its config.json.

    `mvsa`: a folder with MVSA's train.jsonl + dev.jsonl (both fitted on); `semeval`: general tweets for the
    text path; `targeted`: the targeted sets' folder, "none" for no target head, "borrow:MODEL" for MODEL's
    (a model name or folder), or "copy:MODEL" for a copy of it; each None: its folder under
    the data folder. `base`: the model folder whose encoders (and fine-tuned text layers) are used. `name`: the
    model's name in every scored row (default: the folder's). `cache_dir`: the feature cache (default
    FEATURES_DIR), for the stacked heads' pooled features and the target head's token states and fits alike."""
    cache = Path(cache_dir) if cache_dir is not None else FEATURES_DIR
    data = resolve_data_dir()
    config = stack.train_model(mvsa or data / MVSA, semeval or data / SEMEVAL, out, base=base, weight=weight,
                               recipe=recipe, name=name, seed=seed, cache_dir=cache)
    if str(targeted) == NO_TARGET_HEAD:
        return config
    if str(targeted).startswith(COPY):
        return copy_target_head(out, str(targeted)[len(COPY):])
    if str(targeted).startswith(BORROW):
        from mmsa.model import SentimentModel, load_model

        lender = str(targeted)[len(BORROW):]
        figures, head = borrow_config(SentimentModel(Path(out)), load_model(lender), data / TARGETED, seed=seed,
                                      cache_dir=cache)
        return borrow_target_head(out, lender, figures, head)
    return add_target_head(out, targeted or data / TARGETED, seed=seed, cache_dir=cache)


def copy_target_head(out: str | Path, source: str) -> dict:
    """Give the model folder `out` model `source`'s own target head, with its fit's entries in config.json
    (TARGET_ENTRIES), refusing unless the head reads the same encoder states in both: the same text encoder and
    length, and no layer below the head's blocks fine-tuned in either folder. A retrained post path over new top
    layers (a distilled base) keeps the head this way instead of refitting it (hours of CPU). Returns the config."""
    from mmsa.model import load_model

    src = load_model(source)
    out = Path(out)
    if src.target_head is None or src.config.get("target_model"):
        raise ValueError(f"model {source!r} has no target head of its own to copy")
    if src.folder.resolve() == out.resolve():
        raise ValueError(f"{out}: copy the target head into another folder than the one it comes from")
    config = json.loads((out / "config.json").read_text())
    if any(config[k] != src.config[k] for k in ("text_encoder", "max_length")):
        raise ValueError(f"{out}: its text encoder differs from {source!r}'s, so the target head would read other states")
    first = len(src.text_encoder.layers()) - len(src.target_head.blocks)  # the first layer the head reruns
    for folder, cfg in ((src.folder, src.config), (out, config)):
        below = [i for i in tuned_layers(folder, cfg) if i < first]
        if below:
            raise ValueError(f"{folder} fine-tunes text layers {below}, below the target head's blocks (from layer "
                             f"{first}): the head would read other states there")
    files.copy(src.folder / src.config["target_head"], out / "target_head.safetensors")
    config.update({k: src.config[k] for k in TARGET_ENTRIES if k in src.config},
                  target_head="target_head.safetensors", target_copied_from=src.version)
    files.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return config


def tuned_layers(folder: Path, config: dict) -> list[int]:
    """The indices of the text encoder layers a model folder's text_layers file replaces (none without one)."""
    from safetensors import safe_open

    if not config.get("text_layers"):
        return []
    with safe_open(str(folder / config["text_layers"]), "pt") as f:
        return sorted({int(m.group(1)) for k in f.keys() if (m := re.search(r"\blayer\.(\d+)\.", k))})


def borrow_target_head(out: str | Path, lender: str, figures: dict | None = None, head=None) -> dict:
    """Make the model folder `out` score brands with model `lender`'s target head (config.json `target_model`,
    and `figures`: `mmsa.targeted.borrow_config`'s shift, blend weight, out-of-fold figures and quantification
    statistics), blended with `head` (a TargetHead over `out`'s own encoder; None: none), checking that the
    lender loads and has a head of its own. Returns the new config."""
    from mmsa.model import load_model

    if load_model(lender).target_head is None:
        raise ValueError(f"model {lender!r} has no target head to lend")
    out = Path(out)
    config = {**json.loads((out / "config.json").read_text()), "target_model": lender, **(figures or {})}
    if head is not None:
        write_target_head(out, head, config)
    files.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return config
