"""The shipped model's recipe, end to end: the one function that builds it (`train_default`), which `mmsa train`,
the train flow and its deployment all call, so a retrain by the deployment and one by hand build the same model.

The recipe: the linear heads of `mmsa.stack` (the fusion `mmsa compare` chose, `stack.DEFAULT_RECIPE`, with
the general text head's class weighting `stack.DEFAULT_WEIGHT`) fitted over a base model's encoders, then the
target head of `mmsa.targeted` (sentiment toward each brand), which reads the new folder's own encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmsa import files, stack
from mmsa.data import MVSA, SEMEVAL, TARGETED, resolve_data_dir
from mmsa.features import FEATURES_DIR
from mmsa.targeted import add_target_head, borrow_config, write_target_head

NO_TARGET_HEAD = "none"  # as `targeted`: the stacked heads alone, without the target head
BORROW = "borrow:"  # as `targeted`, "borrow:MODEL": MODEL's head scores the brands (config target_model), blended with a target head of its own


def train_default(out: str | Path, mvsa: str | Path | None = None, semeval: str | Path | None = None,
                  targeted: str | Path | None = None, base: str | Path = "default", weight: str = stack.DEFAULT_WEIGHT,
                  recipe: str = stack.DEFAULT_RECIPE, name: str | None = None, seed: int = 0,
                  cache_dir: str | Path | None = None) -> dict:
    """Build the shipped recipe into the model folder `out` and return its config.json.

    `mvsa`: a folder with MVSA's train.jsonl + dev.jsonl (both fitted on); `semeval`: general tweets for the
    text path; `targeted`: the targeted sets' folder, "none" for no target head, or "borrow:MODEL" for MODEL's
    (a model name or folder); each None: its folder under
    the data folder. `base`: the model folder whose encoders (and fine-tuned text layers) are used. `name`: the
    model's name in every scored row (default: the folder's). `cache_dir`: the feature cache (default
    FEATURES_DIR), for the stacked heads' pooled features and the target head's token states and fits alike."""
    cache = Path(cache_dir) if cache_dir is not None else FEATURES_DIR
    data = resolve_data_dir()
    config = stack.train_model(mvsa or data / MVSA, semeval or data / SEMEVAL, out, base=base, weight=weight,
                               recipe=recipe, name=name, seed=seed, cache_dir=cache)
    if str(targeted) == NO_TARGET_HEAD:
        return config
    if str(targeted).startswith(BORROW):
        from mmsa.model import SentimentModel, load_model

        lender = str(targeted)[len(BORROW):]
        figures, head = borrow_config(SentimentModel(Path(out)), load_model(lender), data / TARGETED, seed=seed,
                                      cache_dir=cache)
        return borrow_target_head(out, lender, figures, head)
    return add_target_head(out, targeted or data / TARGETED, seed=seed, cache_dir=cache)


def borrow_target_head(out: str | Path, lender: str, figures: dict | None = None, head=None) -> dict:
    """Make the model folder `out` score brands with model `lender`'s target head (config.json `target_model`,
    and `figures`: `mmsa.targeted.borrow_config`'s blend weight, out-of-fold figures and quantification
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
