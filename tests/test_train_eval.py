"""Full train -> save -> load_model -> predict/evaluate path on synthetic posts with tiny random encoders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmsa import cli
from mmsa.data import load_image, load_jsonl
from mmsa.evaluate import classification_metrics, evaluate_file
from mmsa.heads import HEAD_NAMES
from mmsa.infer import Engine, get_engine
from mmsa.model import load_model
from synthetic import tiny_text_encoder, tiny_vit, write_dataset
from mmsa.encoders import load_text_encoder, overlay_text_layers
from mmsa.train import (TrainConfig, add_low_rank, class_weight, fold_ids, length_batches, loss_weight, merge_low_rank,
                        run, teacher_probs)

torch.set_num_threads(1)  # tiny models: extra threads only add waiting on a shared 2-core machine


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return {
        "data": write_dataset(root / "data", n_train=160, n_dev=60, text_only_every=5),
        "text": str(tiny_text_encoder(root / "bert")),
        "image": f"hf:{tiny_vit(root / 'vit')}",
        "cache": root / "cache",
    }


def _cfg(env, **kw) -> TrainConfig:
    base = dict(text_encoder=env["text"], image_encoder=env["image"], epochs=4, patience=2, hidden=32,
                head_kwargs={"width": 24}, folds=3, members=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_every_head_trains_saves_and_evaluates(env, head, tmp_path):
    summary = run(_cfg(env, head=head), env["data"], tmp_path / "m", cache_dir=env["cache"], progress=False)
    assert len(summary["best_epochs"]) == 1 and 1 <= summary["best_epochs"][0] <= 4 and summary["dev"]["n"] == 60
    m = evaluate_file(env["data"] / "dev.jsonl", str(tmp_path / "m"))
    assert m["n"] == 60 and m["n_with_image"] == 48
    assert np.array(m["confusion"]).sum() == 60


def test_fusion_learns_the_synthetic_signal(env, tmp_path):
    summary = run(_cfg(env, head="native_combine", epochs=15, patience=15), env["data"], None,
                  cache_dir=env["cache"], progress=False)
    majority = np.bincount(load_jsonl(env["data"] / "dev.jsonl").labels).max() / 60
    assert summary["dev"]["accuracy"] > majority + 0.1


def test_folds_are_stratified_and_seeded():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 30)
    folds = fold_ids(labels, 5, seed=0)
    for k in range(5):
        assert np.bincount(labels[folds == k], minlength=3).tolist() == [10, 2, 6]
    assert not np.array_equal(folds, fold_ids(labels, 5, seed=1)) and np.array_equal(folds, fold_ids(labels, 5, seed=0))


def test_fold_ensemble_never_looks_at_dev(env, tmp_path):
    """Members early-stop on their own held-out fold: scrambling the dev labels changes the reported
    dev metrics but not one weight of the model. The saved ensemble reloads to the same dev numbers."""
    summary = run(_cfg(env, head="native_combine", members=3), env["data"], tmp_path / "a", cache_dir=env["cache"],
                  progress=False)
    scrambled = tmp_path / "scrambled"
    scrambled.mkdir()
    (scrambled / "images").symlink_to(env["data"] / "images")
    (scrambled / "train.jsonl").write_text((env["data"] / "train.jsonl").read_text())
    rows = [json.loads(line) for line in (env["data"] / "dev.jsonl").read_text().splitlines()]
    shifted = {"positive": "neutral", "neutral": "negative", "negative": "positive"}
    (scrambled / "dev.jsonl").write_text("".join(json.dumps({**r, "label": shifted[r["label"]]}) + "\n" for r in rows))
    other = run(_cfg(env, head="native_combine", members=3), scrambled, tmp_path / "b", cache_dir=env["cache"], progress=False)
    a, b = load_file(tmp_path / "a" / "heads.safetensors"), load_file(tmp_path / "b" / "heads.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k.split(".")[1] for k in a} == {"0", "1", "2"}  # members.<k>.*
    assert other["dev"]["accuracy"] != summary["dev"]["accuracy"]
    assert len(summary["dev_member_accuracy"]) == 3
    assert json.loads((tmp_path / "a" / "config.json").read_text())["members"] == 3
    m = evaluate_file(env["data"] / "dev.jsonl", str(tmp_path / "a"))
    assert abs(m["accuracy"] - summary["dev"]["accuracy"]) <= 1 / 60  # fp16 storage may flip one post


def test_member_settings_are_validated(env, tmp_path):
    with pytest.raises(ValueError, match="members <= folds"):
        run(_cfg(env, head="native_combine", members=4), env["data"], None, cache_dir=env["cache"], progress=False)
    with pytest.raises(ValueError, match="members=1"):
        run(_cfg(env, head="native_combine", members=2, finetune_layers=1), env["data"], None, cache_dir=env["cache"],
            progress=False)


def test_same_seed_same_model(env, tmp_path):
    for name in ("a", "b"):
        run(_cfg(env, head="cmac", seed=3), env["data"], tmp_path / name, cache_dir=env["cache"], progress=False)
    a, b = load_file(tmp_path / "a" / "heads.safetensors"), load_file(tmp_path / "b" / "heads.safetensors")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_prediction_contract(env, tmp_path):
    run(_cfg(env, head="hstec"), env["data"], tmp_path / "m", cache_dir=env["cache"], progress=False)
    model = load_model(str(tmp_path / "m"))
    assert load_model(str(tmp_path / "m")) is model  # cached per process
    assert re.fullmatch(r"m\+[0-9a-f]{8}", model.version) and model.image_size == 32
    ds = load_jsonl(env["data"] / "dev.jsonl")
    images = [load_image(p, 32) if p else None for p in ds.images]
    engine = Engine(model, batch_size=7)
    pred = engine.predict(ds.texts, images)
    no_img = np.array([im is None for im in images])
    np.testing.assert_allclose(pred.probs.sum(1), 1, atol=1e-5)
    assert np.isnan(pred.image_probs[no_img]).all() and not np.isnan(pred.image_probs[~no_img]).any()
    np.testing.assert_array_equal(pred.probs[no_img], pred.text_probs[no_img])
    perm = np.random.default_rng(0).permutation(len(ds))  # sorting by length inside predict keeps order
    shuffled = engine.predict([ds.texts[i] for i in perm], [images[i] for i in perm])
    np.testing.assert_allclose(shuffled.probs, pred.probs[perm], atol=1e-5)


def test_finetuned_text_layers_are_shipped_and_reloaded(env, tmp_path):
    summary = run(_cfg(env, head="native_cat", finetune_layers=1, lr_encoder=1e-3), env["data"], tmp_path / "m",
                  cache_dir=env["cache"], progress=False)
    layers = load_file(tmp_path / "m" / "text_layers.safetensors")
    assert layers and all(k.startswith("encoder.layer.1.") for k in layers)  # only the top block of 2
    m = evaluate_file(env["data"] / "dev.jsonl", str(tmp_path / "m"))
    assert abs(m["accuracy"] - summary["dev"]["accuracy"]) <= 1 / 60  # fp16 storage may flip one post


def test_an_mpnet_text_side_fine_tunes_ships_and_scores_alike_through_onnx(env, tmp_path):
    """The large tier's architecture (a tiny random MPNet here) through the same path as MiniLM: its top block
    fine-tuned and shipped alone, reloaded over the backbone, and the ONNX graphs exported from it give the torch
    engine's probabilities."""
    mpnet = str(tiny_text_encoder(tmp_path / "mpnet", arch="mpnet"))
    summary = run(_cfg(env, head="native_cat", text_encoder=mpnet, finetune_layers=1, lr_encoder=1e-3), env["data"],
                  tmp_path / "m", cache_dir=env["cache"], progress=False)
    layers = load_file(tmp_path / "m" / "text_layers.safetensors")
    assert layers and all(k.startswith("encoder.layer.1.") for k in layers)
    m = evaluate_file(env["data"] / "dev.jsonl", str(tmp_path / "m"))
    assert m["n"] == 60 and abs(m["accuracy"] - summary["dev"]["accuracy"]) <= 1 / 60  # fp16 storage may flip one post
    model = load_model(str(tmp_path / "m"))
    assert model.text_encoder.model.config.model_type == "mpnet"
    ds = load_jsonl(env["data"] / "dev.jsonl")
    images = [load_image(p, model.image_size) if p else None for p in ds.images]
    torch_probs = Engine(model, backend="torch").predict(ds.texts, images).probs
    onnx_probs = Engine(model, backend="onnx", cache_dir=tmp_path / "onnx").predict(ds.texts, images).probs
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)


def _tweets(env, path):
    rows = [json.loads(line) for line in (env["data"] / "train.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    return str(path)


def test_text_pretraining_reports_held_out_metrics(env, tmp_path):
    cfg = _cfg(env, head="text", pretrain_text=_tweets(env, tmp_path / "tweets.jsonl"), pretrain_layers=1)
    run(cfg, env["data"], tmp_path / "m", cache_dir=env["cache"], progress=False)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["pretrain_metrics"]["n"] == 16  # 10% of 160 held out
    assert config["text_layers"] == "text_layers.safetensors"


def test_low_rank_updates_fold_into_the_weights_as_a_model_folder_loads_them(tmp_path):
    texts = ["good day", "bad day at the office", "hello"]
    enc = load_text_encoder(str(tiny_text_encoder(tmp_path / "mpnet", arch="mpnet")))
    plain = enc.encode(texts).pooled
    params = add_low_rank(enc, 1, 2)
    for p in params:  # peft starts B at zero: make the update a real one
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        adapted = enc.encode(texts).pooled
    state = merge_low_rank(enc)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    assert state and all(k.endswith((".lora_a", ".lora_b")) for k in state)
    assert all(k.startswith("encoder.layer.1.") for k in state)  # the top block of two only
    assert all(v.shape[0] == 2 for k, v in state.items() if k.endswith(".lora_a"))
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(texts).pooled, adapted, atol=1e-5, rtol=0)
        fresh = load_text_encoder(str(tmp_path / "mpnet"))
        assert overlay_text_layers(fresh.model, state) == []
        torch.testing.assert_close(fresh.encode(texts).pooled, adapted, atol=1e-5, rtol=0)
    assert overlay_text_layers(fresh.model, {"encoder.layer.9.x.weight.lora_a": state[next(iter(state))]}) == [
        "encoder.layer.9.x.weight.lora_a"]


def test_low_rank_pretraining_keeps_only_the_updates_in_the_model_folder(env, tmp_path):
    mpnet = str(tiny_text_encoder(tmp_path / "mpnet", arch="mpnet"))
    cfg = _cfg(env, head="text", text_encoder=mpnet, pretrain_text=_tweets(env, tmp_path / "tweets.jsonl"),
               pretrain_layers=1, pretrain_rank=2)
    run(cfg, env["data"], tmp_path / "m", cache_dir=env["cache"], progress=False)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    layers = load_file(tmp_path / "m" / config["text_layers"])
    assert config["pretrain_metrics"]["n"] == 16 and config["train_config"]["pretrain_rank"] == 2
    assert layers and all(k.endswith((".lora_a", ".lora_b")) for k in layers)
    block = sum(p.numel() for p in load_text_encoder(mpnet).layers()[-1].parameters())
    assert sum(v.numel() for v in layers.values()) < block / 2
    ds = load_jsonl(env["data"] / "dev.jsonl", with_images=False)
    assert get_engine(str(tmp_path / "m")).predict(ds.texts[:4], [None] * 4).probs.shape == (4, 3)


def test_distillation_reads_the_teacher_as_scoring_does_and_changes_the_student(env, tmp_path):
    """--pretrain-teacher: the soft labels are the teacher's own probabilities for text-only posts, and they move
    the pre-trained layers (half the target is theirs); the cached pre-training is not reused across teachers."""
    tweets = _tweets(env, tmp_path / "tweets.jsonl")
    run(_cfg(env, head="text"), env["data"], tmp_path / "teacher", cache_dir=env["cache"], progress=False)
    texts = [json.loads(line)["text"] for line in open(tweets)]
    soft = teacher_probs(str(tmp_path / "teacher"), tweets)
    scored = Engine(load_model(str(tmp_path / "teacher")), backend="torch").predict(texts, [None] * len(texts)).probs
    np.testing.assert_allclose(soft, scored, atol=1e-5)
    plain = _cfg(env, head="text", pretrain_text=tweets, pretrain_layers=1)
    run(plain, env["data"], tmp_path / "plain", cache_dir=env["cache"], progress=False)
    taught = TrainConfig(**{**plain.__dict__, "pretrain_teacher": str(tmp_path / "teacher")})
    run(taught, env["data"], tmp_path / "taught", cache_dir=env["cache"], progress=False)
    a, b = (load_file(tmp_path / m / "text_layers.safetensors") for m in ("plain", "taught"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "taught" / "config.json").read_text())["train_config"]["pretrain_teacher"] == str(tmp_path / "teacher")


def test_metrics_match_hand_computed_values():
    m = classification_metrics(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx({"positive": 0.5, "neutral": 1.0, "negative": 2 / 3})
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 2 / 3, 0.8]))
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_macro_means_leave_out_a_class_the_file_neither_has_nor_predicts():
    """As scikit-learn averages: a test file without neutral rows is not marked down a third for it."""
    m = classification_metrics(np.array([0, 0, 0, 2, 2]), np.array([0, 0, 2, 2, 2]))
    assert m["macro_recall"] == pytest.approx(np.mean([2 / 3, 1.0])) and m["per_class_recall"]["neutral"] == 0
    assert m["macro_f1"] == pytest.approx(np.mean([0.8, 0.8]))


def test_cli_evaluate_json(env, tmp_path, capsys):
    run(_cfg(env, head="text"), env["data"], tmp_path / "m", cache_dir=env["cache"], progress=False)
    assert cli.main(["evaluate", "--data", str(env["data"] / "dev.jsonl"), "--model", str(tmp_path / "m"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 60 and {"accuracy", "weighted_f1", "macro_f1", "macro_recall", "ci95", "ece"} <= set(out)
    for block in (out, out["text_only"]):
        lo, hi = block["ci95"]["accuracy"]
        assert lo <= block["accuracy"] <= hi and 0 <= block["ece"] <= 1


def test_shipped_default_model_honours_the_contract():
    model = load_model("default")
    assert re.fullmatch(r"mmsa-default-\d+\+[0-9a-f]{8}", model.version) and model.image_size == 260  # Lite2
    img = np.full((260, 260, 3), 200, np.uint8)
    pred = get_engine(model).predict(["I love this, best day ever!", "worst service, never again"], [img, None])
    assert pred.probs.shape == pred.text_probs.shape == pred.image_probs.shape == (2, 3)
    assert np.isnan(pred.image_probs[1]).all() and np.array_equal(pred.probs[1], pred.text_probs[1])
    assert pred.text_probs[0].argmax() == 0 and pred.text_probs[1].argmax() == 2  # positive, negative


@pytest.mark.slow
def test_shipped_default_model_dev_accuracy():
    from mmsa.data import resolve_data_dir

    dev = resolve_data_dir() / "mvsa_single" / "dev.jsonl"
    if not dev.exists():
        pytest.skip(f"no MVSA-Single dev set at {dev}")
    m = evaluate_file(dev, "default")
    assert m["n"] == 450 and m["accuracy"] > 0.76 and m["weighted_f1"] > 0.75


def test_feature_cache_follows_mmsa_cache(tmp_path):
    """Training features go under $MMSA_CACHE/features, beside the engine's ONNX graphs ($MMSA_CACHE/onnx)."""
    code = "from mmsa import features; print(features.FEATURES_DIR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MMSA_CACHE": str(tmp_path)}).stdout.strip()
    assert out == str(tmp_path / "features")


def test_bootstrap_intervals_bracket_the_metric_and_narrow_with_more_posts():
    from mmsa.evaluate import bootstrap_intervals

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.7, y, (y + 1) % 3)  # about 70% right
    acc = float((pred == y).mean())
    small, large = bootstrap_intervals(y[:100], pred[:100]), bootstrap_intervals(np.tile(y, 10), np.tile(pred, 10))
    lo, hi = bootstrap_intervals(y, pred)["accuracy"]
    assert lo < acc < hi and 0.05 < hi - lo < 0.12  # about +-1.96 * sqrt(.7 * .3 / 400)
    assert large["accuracy"][1] - large["accuracy"][0] < small["accuracy"][1] - small["accuracy"][0]
    assert bootstrap_intervals(y, pred) == bootstrap_intervals(y, pred)  # seeded


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    from mmsa.evaluate import expected_calibration_error

    y = np.array([0, 0, 0, 1] * 25)
    honest = np.tile([0.75, 0.15, 0.10], (100, 1))  # says 75% and is right 75% of the time
    overconfident = np.tile([0.99, 0.005, 0.005], (100, 1))
    assert expected_calibration_error(honest, y) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(overconfident, y) == pytest.approx(0.24, abs=1e-6)


def test_a_bad_label_is_an_error_naming_its_file_and_line(tmp_path):
    """One reader for every labelled file (training sets, pooled features, targeted sets): a label outside
    LABELS, or a line that is not JSON, stops the read with the file and line, never a silent -1."""
    from mmsa.data import read_rows

    good = '{"text": "ok", "label": "positive", "text_label": "neutral"}\n'
    cases = {"label": '{"text": "typo", "label": "postive"}', "image_label": '{"text": "x", "label": "neutral", "image_label": 2}',
             "JSON object": '{"text": "cut off", "label": '}
    for what, bad in cases.items():
        path = tmp_path / f"{what}.jsonl"
        path.write_text(good + "\n" + bad + "\n")  # the blank line counts: the bad row is on line 3
        for read in (read_rows, load_jsonl):
            with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: .*{what}"):
                read(path)
    for what, bad in {"text": '{"text": 7, "label": "neutral"}', "target": '{"text": "x", "target": 2016, "label": "neutral"}',
                      "image": '{"text": "x", "image": ["a.jpg"], "label": "neutral"}'}.items():
        path = tmp_path / f"{what}.jsonl"
        path.write_text(good + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: {what} must be a string"):
            read_rows(path)
    path = tmp_path / "empty.jsonl"  # scored, it was a guess from an empty text; `mmsa score` labels no such post
    path.write_text(good + '{"text": "  ", "label": "neutral"}\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: neither text nor image"):
        read_rows(path)
    path = tmp_path / "fine.jsonl"  # a byte-order mark, as a dump may have one
    path.write_text("\ufeff" + good + '{"text": "no modality labels", "label": "negative"}\n' + '{"image": "a.jpg", "label": "neutral"}\n')
    assert [r["label"] for r in read_rows(path)] == ["positive", "negative", "neutral"]
    assert load_jsonl(path, with_images=False).labels.tolist() == [0, 2, 1]


def test_one_class_weighting_for_linear_heads_and_neural_losses():
    y = np.array([0] * 60 + [1] * 10 + [2] * 30)
    assert class_weight(y, "none") is None and loss_weight(y, "none") is None
    balanced, sqrt = class_weight(y, "balanced"), class_weight(y, "sqrt")
    counts = np.bincount(y)
    assert np.allclose([balanced[c] * counts[c] for c in range(3)], len(y) / 3)  # every class weighs the same
    assert all(abs(np.log(sqrt[c])) == pytest.approx(abs(np.log(balanced[c])) / 2) for c in range(3))
    assert torch.equal(loss_weight(y, "sqrt"), torch.tensor([sqrt[c] for c in range(3)], dtype=torch.float32))


def test_length_batches_cover_every_row_once_in_batches_of_similar_length():
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    batches = length_batches(lengths, 10, np.random.default_rng(1).permutation)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(1000)) and max(len(b) for b in batches) == 10
    assert np.mean([np.ptp(lengths[b]) for b in batches]) < 10  # random batches of 10 would spread over ~160
    again = length_batches(lengths, 10, np.random.default_rng(1).permutation)  # the caller's stream decides
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    gen = torch.Generator().manual_seed(1)
    assert len(length_batches(lengths, 10, lambda n: torch.randperm(n, generator=gen).numpy())) == 100
