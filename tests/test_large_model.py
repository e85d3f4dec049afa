"""The shipped `--model large` folder (mmsa/models/large) against an MPNet-base-shaped encoder. Its real backbone,
all-mpnet-base-v2, comes from `make install-large` (404 MB), which CI does not run; a randomly initialised MPNet of
the same shape stands in, so what is checked is the folder: every weight it carries fits the architecture its
config names, and the whole scoring path runs through it."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from mmsa import model as model_mod
from mmsa.encoders import LARGE_TEXT_ENCODER, TextEncoder, overlay_text_layers
from mmsa.infer import Engine
from mmsa.model import SentimentModel, resolve_model_dir
from synthetic import tiny_text_encoder


def _mpnet_base(tmp_path) -> TextEncoder:
    """A random MPNet with all-mpnet-base-v2's shape (transformers' MPNetConfig defaults are mpnet-base's), over a
    small word-piece vocabulary."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_text_encoder(tmp_path / "tok", arch="mpnet")))
    torch.manual_seed(0)
    return TextEncoder(LARGE_TEXT_ENCODER, MPNetModel(MPNetConfig(vocab_size=len(tokenizer))).eval(), tokenizer)


def test_the_large_folder_fits_mpnet_base_and_scores(tmp_path, monkeypatch):
    folder = resolve_model_dir("large")
    large = SentimentModel(folder)  # heads.safetensors loads into the head its config.json names; encoders on first use
    assert large.config["text_encoder"] == LARGE_TEXT_ENCODER and large.config["text_dim"] == 768

    enc = _mpnet_base(tmp_path)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    state = load_file(str(folder / large.config["text_layers"]))
    assert overlay_text_layers(enc.model, state) == []  # every low-rank pair names a weight MPNet-base has
    after = enc.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    tuned = {int(k.split(".")[2]) for k in state}  # encoder.layer.<i>.…: the top six of twelve blocks were tuned
    assert tuned == set(range(6, 12)) and changed and {int(k.split(".")[2]) for k in changed} == tuned

    monkeypatch.setattr(model_mod, "load_text_encoder", lambda name, max_length: enc)
    image = np.random.default_rng(0).integers(0, 256, (large.image_size, large.image_size, 3), np.uint8)
    pred = Engine(large, backend="torch", threads=1).predict(["great phone, love it", "worst service ever"], [None, image])
    np.testing.assert_allclose(pred.probs.sum(1), 1, atol=1e-5)
    assert np.isnan(pred.image_probs[0]).all() and np.isfinite(pred.image_probs[1]).all()
    np.testing.assert_allclose(pred.probs[0], pred.text_probs[0], atol=1e-6)  # no image: the text path's own
