"""The default model's recipe (mmsa.stack) and the selection protocol (mmsa.crossval) on synthetic posts
with tiny random encoders: fitted heads reproduced by the runtime module, held-out labels never read,
imageless posts on the general text head, the CV table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsa import crossval, stack
from mmsa.data import load_image, load_jsonl
from mmsa.evaluate import evaluate_file
from mmsa.features import pooled_features
from mmsa.heads import Feats
from mmsa.infer import Engine
from mmsa.model import load_model
from synthetic import tiny_text_encoder, tiny_vit, write_dataset
from mmsa.train import TrainConfig, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic MVSA-like posts, a text-only 'tweets' file, and a base model folder holding tiny encoders."""
    root = tmp_path_factory.mktemp("stack")
    data = write_dataset(root / "data", n_train=150, n_dev=60)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    tweets = root / "tweets.jsonl"
    tweets.write_text("".join(json.dumps({"text": r["text"], "label": r["text_label"]}) + "\n" for r in rows * 2))
    cfg = TrainConfig(head="text", text_encoder=str(tiny_text_encoder(root / "bert")),
                      image_encoder=f"hf:{tiny_vit(root / 'vit')}", epochs=1, hidden=16, folds=3, members=1)
    run(cfg, data, root / "base", cache_dir=root / "cache", progress=False)
    return {"data": data, "tweets": tweets, "base": root / "base", "cache": root / "cache"}


def _toy(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y, il = rng.integers(0, 3, n), rng.integers(0, 3, n)
    t = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
    i = (rng.normal(size=(n, 12)) + 0.5 * il[:, None]).astype(np.float32)
    return t, i, y, il


def test_runtime_module_reproduces_the_fitted_heads():
    t, i, y, il = _toy()
    general = stack.fit_lr(t, y, weight="balanced")
    image = stack.branch(i, il)
    fit, oof = stack.fit_stack({"text_post": stack.branch(t, y), "image_post": stack.branch(i, y),
                                "image_label": image, "text_general": (general, general.predict_proba(t))}, y)
    module = stack.build_head(fit, general, 1.5, image[0], 0.8, t.shape[1], i.shape[1])
    has = torch.tensor([True] * 200 + [False] * 40)
    with torch.no_grad():
        out = {k: v.softmax(-1).numpy() for k, v in module(Feats(torch.from_numpy(t), torch.from_numpy(i)), has).items()}
    p_general = stack.tempered(general.predict_proba(t), 1.5)
    np.testing.assert_allclose(out["fused"][:200], fit.predict(t, i)[:200], atol=1e-5)
    np.testing.assert_allclose(out["fused"][200:], p_general[200:], atol=1e-5)  # no image: the general text head
    np.testing.assert_allclose(out["text"], p_general, atol=1e-5)
    np.testing.assert_allclose(out["image"], stack.tempered(image[0].predict_proba(i), 0.8), atol=1e-5)
    assert oof.shape == (240, 3) and np.allclose(oof.sum(1), 1)


def test_temperature_and_rule():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 2000)
    sharp = np.full((2000, 3), 0.01)
    sharp[np.arange(2000), np.where(rng.random(2000) < 0.6, y, (y + 1) % 3)] = 0.98  # 60% right, 98% sure
    t = stack.fit_temperature(sharp, y)
    assert t > 1.5  # overconfident probabilities are softened...
    assert (stack.tempered(sharp, t).argmax(1) == sharp.argmax(1)).all()  # ...without changing a label
    pos, neu, neg = np.eye(3)
    p = stack.rule_combine(np.array([pos, neu, neu, pos]), np.array([neu, neg, neu, neg]))
    assert p[:3].argmax(1).tolist() == [0, 2, 1]  # one neutral -> the other; both neutral -> neutral
    assert np.allclose(p.sum(1), 1)


def test_corrected_standard_error_is_larger_than_the_naive_one():
    d = np.array([0.01, 0.03, -0.01, 0.02, 0.0, 0.02])
    naive = d.std(ddof=1) / np.sqrt(len(d))
    assert crossval.corrected_se(d, 800, 200) == pytest.approx(np.sqrt(d.var(ddof=1) * (1 / 6 + 0.25)))
    assert crossval.corrected_se(d, 800, 200) > naive


def test_held_out_fold_labels_are_never_read(env):
    """Every candidate's predictions on a held-out fold stay the same when that fold's labels change."""
    m = load_model(env["base"])
    mv = stack.pooled_pool(m, env["data"], cache_dir=env["cache"])
    sem = pooled_features(m, env["tweets"], with_images=False, cache_dir=env["cache"])
    g = stack.fit_lr(sem.text, sem.label)
    tr, te = crossval.repeated_folds(mv.label, 3, 1)[0]
    a = crossval.run_fold(mv, g.predict_proba(mv.text), g, tr, te, 0, m.text_encoder)
    for labels in (mv.label, mv.text_label, mv.image_label):
        labels[te] = (labels[te] + 1) % 3
    b = crossval.run_fold(mv, g.predict_proba(mv.text), g, tr, te, 0, m.text_encoder)
    assert set(a) == set(crossval.CANDIDATES)
    for name in a:
        np.testing.assert_allclose(a[name][1], b[name][1], atol=1e-6, err_msg=name)


def test_compare_writes_the_cv_table(env, tmp_path):
    out = tmp_path / "compare.md"
    result = crossval.compare(env["data"], env["tweets"], out, model=env["base"], k=3, repeats=1,
                              cache_dir=env["cache"], progress=False)
    text = out.read_text()
    assert text == crossval.table(result) and len(result["folds"]) == 3
    rows = {line.split("|")[1].strip().strip("*").split("*")[0].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "±" in line and not line.startswith("| candidate")}
    assert set(rows) == set(crossval.CANDIDATES)
    assert all(rows[c].count("±") == 6 for c in rows if c != "text") and rows["text"].count("±") == 5
    assert "(shipped)" in text and "Best fusion:" in text
    assert set(result["semeval"]) == set(crossval.SEMEVAL_WEIGHTS)
    ho = result["semeval"][result["semeval_weight"]]["heldout"]
    assert ho["n"] == result["n_semeval_heldout"] == round(0.1 * 300)
    assert json.loads(out.with_suffix(".json").read_text())["folds"] == json.loads(json.dumps(result["folds"]))


def test_compare_puts_another_models_candidates_through_the_same_folds(env, tmp_path):
    """The large tier's rows sit in the default's table, paired fold by fold; the default's rows do not move."""
    cfg = TrainConfig(head="text", text_encoder=str(tiny_text_encoder(tmp_path / "mpnet", arch="mpnet")),
                      image_encoder=load_model(env["base"]).config["image_encoder"], epochs=1, hidden=16, folds=3, members=1)
    run(cfg, env["data"], tmp_path / "large", cache_dir=env["cache"], progress=False)
    kw = dict(k=3, repeats=1, cache_dir=env["cache"], progress=False)
    alone = crossval.compare(env["data"], env["tweets"], None, model=env["base"], **kw)
    both = crossval.compare(env["data"], env["tweets"], tmp_path / "c.md", model=env["base"], others=[tmp_path / "large"], **kw)
    assert set(both["folds"][0]) == set(crossval.CANDIDATES) | {f"large {c}" for c in crossval.CANDIDATES}
    assert [{c: f[c] for c in crossval.CANDIDATES} for f in both["folds"]] == alone["folds"]
    assert both["folds"][0]["large text"] != both["folds"][0]["text"]
    text = (tmp_path / "c.md").read_text()
    assert "| large stack2 |" in text and "## The imageless path on SemEval-2017 tweets (large)" in text
    assert set(both["others"]["large"]["semeval"]) == set(crossval.SEMEVAL_WEIGHTS)


def test_stack_model_trains_loads_and_scores(env, tmp_path):
    config = stack.train_model(env["data"], env["tweets"], tmp_path / "m", base=env["base"], weight="sqrt",
                               recipe="stack4", cache_dir=env["cache"])
    assert config["head"] == "stack" and config["semeval_heldout"]["n"] == 30
    assert config["head_kwargs"]["branches"] == list(stack.RECIPES["stack4"])
    # brand shares of a model without a target head are corrected with its text path's own statistics
    q, tc = config["quantification"], config["train_config"]
    assert q["n"] == tc["n_semeval_train"] + tc["n_mvsa"] and sum(q["prior"]) == pytest.approx(1)
    m = load_model(tmp_path / "m")
    assert m.version.startswith("m+")
    metrics = evaluate_file(env["data"] / "dev.jsonl", str(tmp_path / "m"), backend="torch")
    majority = np.bincount(load_jsonl(env["data"] / "dev.jsonl").labels).max() / 60
    assert metrics["n"] == 60 and metrics["accuracy"] > majority + 0.1
    assert {"text_only", "image_only", "ci95", "ece"} <= set(metrics)
    # A post without an image is scored by the general text head alone, in the engine as in training.
    ds = load_jsonl(env["data"] / "dev.jsonl")
    imgs = [load_image(p, m.image_size) for p in ds.images[:8]]
    engine = Engine(m, backend="torch")
    with_img, without = engine.predict(ds.texts[:8], imgs), engine.predict(ds.texts[:8], [None] * 8)
    np.testing.assert_allclose(without.probs, without.text_probs, atol=1e-6)
    np.testing.assert_allclose(with_img.text_probs, without.text_probs, atol=1e-5)
    assert np.isnan(without.image_probs).all() and not np.allclose(with_img.probs, with_img.text_probs)


def test_mmsa_train_builds_the_recipe_with_the_features_in_its_cache(env, tmp_path, capsys):
    """`mmsa train` (its default head: the shipped recipe, through mmsa.recipe.train_default) keeps the pooled
    features in --cache; a second build reads them back instead of encoding again, to the same heads."""
    from safetensors.torch import load_file

    from mmsa import cli

    cache = tmp_path / "cache"
    args = ["train", "--data", str(env["data"]), "--semeval", str(env["tweets"]), "--base", str(env["base"]),
            "--targeted", "none", "--cache", str(cache), "--name", "candidate-7"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 3 and all(n.startswith("pooled-") and n.endswith(".npz") for n in cached)  # train, dev, tweets
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # read, not written again
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["head"] == "stack" and config["name"] == "candidate-7" and "target_head" not in config
    assert config["train_config"]["recipe"] == stack.DEFAULT_RECIPE
    a, b = load_file(tmp_path / "a" / "heads.safetensors"), load_file(tmp_path / "b" / "heads.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "out-of-fold accuracy" in capsys.readouterr().out
