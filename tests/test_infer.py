"""The inference engine (mmsa.infer) on the shipped default model: same answers as a plain
one-post-at-a-time reference however posts are batched, no post lost on out-of-memory, and the faster
CPU backends agreeing with the fp32 reference on the MVSA-Single dev set."""

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmsa.data import load_image, load_jsonl, resolve_data_dir
from mmsa.demo import PHRASES
from mmsa.heads import Feats
from mmsa.infer import BACKENDS, Engine, cpu_threads, default_backend, get_engine, pick_device, prefetch
from mmsa.model import Prediction, load_model

DEV = resolve_data_dir() / "mvsa_single" / "dev.jsonl"
needs_dev = pytest.mark.skipif(not DEV.exists(), reason=f"no dev set at {DEV}")


@pytest.fixture(scope="module")
def model():
    return load_model("default")


@pytest.fixture(scope="module")
def posts(model):
    """24 posts of very different lengths (1 to 60+ tokens, one empty); a quarter carry an image."""
    rng = random.Random(3)
    phrases = [p.format(b="Acme") for group in PHRASES.values() for p in group]
    texts = [" ".join(rng.choice(phrases) for _ in range(rng.choice([1, 1, 2, 4, 6]))) for _ in range(23)] + [""]
    texts[5] = "ok"
    pix = np.random.default_rng(0)
    size = model.image_size
    images = [pix.integers(0, 256, (size, size, 3), dtype=np.uint8) if i % 4 == 1 else None for i in range(24)]
    return texts, images


def reference_predict(model, texts, images) -> Prediction:
    """The oracle: each post alone through the model's own torch modules (no batching, no padding)."""
    probs, text_probs, image_probs = (np.full((len(texts), 3), np.nan, np.float32) for _ in range(3))
    with torch.inference_mode():
        for i, (text, image) in enumerate(zip(texts, images)):
            t = model.text_encoder.encode([text])
            has = torch.tensor([image is not None])
            if image is not None:
                im = model.image_encoder.encode([image])
                i_hidden, i_mask, i_pooled = im.hidden, im.mask, im.pooled
            else:
                i_pooled = torch.zeros(1, model.image_encoder.dim)
                i_hidden, i_mask = i_pooled.unsqueeze(1), torch.ones(1, 1, dtype=torch.bool)
            out = model.bundle(Feats(t.pooled, i_pooled, t.hidden, t.mask, i_hidden, i_mask), has)
            probs[i], text_probs[i] = out["fused"].softmax(-1)[0], out["text"].softmax(-1)[0]
            if image is not None:
                image_probs[i] = out["image"].softmax(-1)[0]
    return Prediction(probs, text_probs, image_probs)


@pytest.fixture(scope="module")
def reference(model, posts):
    return reference_predict(model, *posts)


def assert_same(a, b, tol=1e-5):
    np.testing.assert_allclose(a.probs, b.probs, atol=tol, rtol=0)
    np.testing.assert_allclose(a.text_probs, b.text_probs, atol=tol, rtol=0)
    np.testing.assert_array_equal(np.isnan(a.image_probs), np.isnan(b.image_probs))
    np.testing.assert_allclose(np.nan_to_num(a.image_probs), np.nan_to_num(b.image_probs), atol=tol, rtol=0)


def test_bucketing_matches_unbucketed_and_unbatched(model, posts, reference):
    """Length buckets change padding only, never a post's probabilities (fp32, 1e-5)."""
    bucketed = Engine(model, batch_size=8, backend="torch")
    unbucketed = Engine(model, batch_size=8, bucket=False, backend="torch")
    got = bucketed.predict(*posts)
    assert_same(got, unbucketed.predict(*posts))
    assert_same(got, reference)
    assert_same(got, bucketed.predict(*posts, batch_size=1))
    assert np.isnan(got.image_probs[0]).all() and not np.isnan(got.image_probs[1]).any()
    np.testing.assert_allclose(got.probs[0], got.text_probs[0])  # no image: fused = text


def test_bucketing_cuts_padding(model, posts):
    """Sorting by token length must pad far less than batching in input order."""

    def padding(engine):
        return sum(int((b.attention_mask == 0).sum()) for b in engine.batches(*posts, batch_size=8))

    assert padding(Engine(model)) < 0.5 * padding(Engine(model, bucket=False))


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_oom_backoff_scores_every_post(model, posts, reference, monkeypatch, fixed_shapes):
    """A forward that runs out of memory above 3 posts: the batch size is halved until it fits, every
    post is still scored with the same probabilities, and the engine keeps the smaller size. The
    retries run outside the exception handler (an active exception's traceback would keep the failed
    attempt's GPU tensors alive during the retry). Also with CUDA's padded image rows."""
    engine = Engine(model, batch_size=16, backend="torch")
    engine.fixed_shapes = fixed_shapes
    real, sizes, handling, failed = engine.forward, [], [], []

    def forward(b):
        if len(b.idx) > 3:
            failed.append(len(b.idx))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(len(b.idx))
        handling.append(sys.exc_info()[0])
        return real(b)

    monkeypatch.setattr(engine, "forward", forward)
    got = engine.predict(*posts)
    assert sum(sizes) == len(posts[0]) and max(sizes) <= 3
    assert handling == [None] * len(sizes)
    assert failed == [16, 8, 4]  # each size fails once; later batches start at the size that fit
    assert engine.batch_size == 2
    assert_same(got, reference)


def test_half_precision_overflow_is_rerun_in_fp32(model, posts, reference):
    """A batch whose autocast run gives non-finite outputs (an fp16 overflow, simulated here on the
    CPU) is scored again without autocast: the answers are the fp32 ones, for every post."""
    autocast_seen = []

    def overflowing(text, image):
        def overflowing_text(ids, mask):
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
            with torch.autocast("cpu", enabled=False):
                hidden, pooled, *tapped = text(ids, mask)  # tapped: the target head's input, when it has one
            return hidden, pooled * float("inf") if autocast_seen[-1] else pooled, *tapped

        def fp32_image(pixels):
            with torch.autocast("cpu", enabled=False):
                return image(pixels)

        return overflowing_text, fp32_image

    engine = Engine(model, batch_size=8, backend="torch", wrap_cores=overflowing)
    engine.autocast = torch.bfloat16  # CPU autocast; the wrappers above keep the math itself in fp32
    got = engine.predict(*posts)
    assert autocast_seen == [True, False] * 3  # 24 posts in 3 batches, each rerun once
    assert_same(got, reference)


def test_oom_at_batch_one_is_raised(model, posts, monkeypatch):
    """When even one post does not fit, the error surfaces instead of looping or dropping posts."""
    engine = Engine(model, batch_size=4)

    def forward(b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine, "forward", forward)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.predict(*posts)


def test_fixed_shapes_give_the_same_answers(model, posts, reference):
    """CUDA's fixed shapes (text widths rounded up to 8, image rows padded with blank images to the
    batch's size, so cuDNN sees few shapes), run here on the CPU: the same probabilities."""
    engine = Engine(model, batch_size=8, backend="torch")
    engine.fixed_shapes = True
    batches = list(engine.batches(*posts, batch_size=8))
    assert all(b.input_ids.shape[1] % 8 == 0 for b in batches)
    assert all(b.pixels is None or len(b.pixels) == len(b.idx) for b in batches)
    assert sum(b.images for b in batches) == sum(im is not None for im in posts[1])
    assert_same(engine.predict(*posts), reference)


def test_predictions_run_on_the_engines_own_thread(model, posts, reference, monkeypatch):
    """Callers on several threads (the flow's shard threads) all get their forwards run on the
    engine's one thread, where CUDA keeps its per-thread cuDNN plans; every answer is right."""
    engine = Engine(model, batch_size=8, backend="torch")
    real, threads = engine.forward, set()

    def forward(b):
        threads.add(threading.current_thread().name)
        return real(b)

    monkeypatch.setattr(engine, "forward", forward)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: engine.predict(*posts), range(3)))
    assert len(threads) == 1 and threads.pop().startswith("mmsa-infer")
    for got in results:
        assert_same(got, reference)


def test_onnx_streams_take_turns_without_a_gap(model, posts, reference, tmp_path, monkeypatch):
    """On CPU, ONNX Runtime runs one batch per core on single-threaded sessions ("streams"). Two callers
    take turns feeding them: the second waits (queued_s) while the first queues its batches, and its
    first batch starts before the first caller's last one is done, so no stream sits idle between
    shards. Every batch runs on a stream; every answer equals the reference."""
    engine = Engine(model, batch_size=4, backend="onnx", cache_dir=tmp_path, threads=2)
    assert engine.streams == 2
    real, events = engine.forward, []

    def forward(b, *args, **kwargs):
        start = time.perf_counter()
        time.sleep(0.05)  # long enough that the second caller is waiting before the first one is done
        out = real(b, *args, **kwargs)
        events.append((threading.current_thread().name, threading.get_ident(), start, time.perf_counter()))
        return out

    monkeypatch.setattr(engine, "forward", forward)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(engine.predict, *posts)
        time.sleep(0.02)
        second = pool.submit(engine.predict, *posts)
        got1, got2 = first.result(), second.result()
    assert_same(got1, reference)
    assert_same(got2, reference)
    assert got2.queued_s > 0.05 and got1.queued_s < got2.queued_s
    assert all(name.startswith("mmsa-stream") for name, *_ in events)
    assert len({ident for _, ident, *_ in events}) == 2  # both streams used
    # The streams take batches in the order queued: the first caller's 6, then the second's.
    events.sort(key=lambda e: e[2])
    assert min(start for *_, start, _ in events[6:]) < max(end for *_, end in events[:6])


def test_prefetched_batches_give_the_same_answers(model, posts, reference):
    """The CUDA path prepares the next batch in a thread; on CPU it must give identical results."""
    engine = Engine(model, batch_size=5, backend="torch")
    engine.prefetch = True
    assert_same(engine.predict(*posts), reference)
    assert list(prefetch(iter([0, None, 2, 3]), depth=2)) == [0, None, 2, 3]


def test_device_threads_and_validation(model):
    """Auto device follows CUDA availability; CPU engines use every core the process may use."""
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    engine = Engine(model, device="cpu", backend="torch")
    assert torch.get_num_threads() == cpu_threads() == len(__import__("os").sched_getaffinity(0))
    assert engine.version == model.version
    with pytest.raises(ValueError, match="unknown backend"):
        Engine(model, backend="tensorrt")
    with pytest.raises(ValueError, match="CPU-only"):
        Engine(model, device="cuda", backend="onnx")
    with pytest.raises(ValueError, match="2 texts but 1 images"):
        engine.predict(["a", "b"], [None])
    with pytest.raises(ValueError, match=f"{model.image_size}x{model.image_size}x3"):
        engine.predict(["a"], [np.zeros((10, 10, 3), np.uint8)])
    assert get_engine(model, backend="torch") is get_engine(model, backend="torch")


def _dev_agreement(model, n, backends, tmp_path):
    ds = load_jsonl(DEV)
    texts = ds.texts[:n]
    images = [load_image(p, model.image_size) if p else None for p in ds.images[:n]]
    ref = Engine(model, backend="torch").predict(texts, images)
    out = {}
    for backend in backends:
        got = Engine(model, backend=backend, cache_dir=tmp_path).predict(texts, images)
        out[backend] = (got.probs.argmax(1) == ref.probs.argmax(1)).mean(), np.abs(got.probs - ref.probs).max()
    return out


@needs_dev
def test_fast_backends_agree_on_dev_sample(model, tmp_path):
    """ONNX Runtime (exported here, into a temporary cache) and int8 on 40 dev rows: labels agree
    with the fp32 torch reference; fp32 ONNX matches it numerically too."""
    res = _dev_agreement(model, 40, ["onnx", "int8", "onnx-int8"], tmp_path)
    assert res["onnx"][0] == 1.0 and res["onnx"][1] < 1e-4
    assert res["int8"][0] >= 0.9 and res["onnx-int8"][0] >= 0.9
    assert len(list(tmp_path.glob("onnx/*/*.onnx"))) == 3  # text, image, text-int8


@needs_dev
@pytest.mark.slow
def test_fast_backends_agree_on_dev_set(model, tmp_path):
    """The whole dev set (450 rows): ONNX (fp32) agrees with torch fp32 on >= 99% of labels."""
    res = _dev_agreement(model, 450, [b for b in BACKENDS if b != "torch"], tmp_path)
    assert res["onnx"][0] >= 0.99 and res["onnx"][1] < 1e-4
    # The int8 paths miss the 99% bar (measured 95-97%): MiniLM's activations quantise badly.
    # Pinned here so a change that makes them worse (or good enough to offer) is noticed.
    assert res["int8"][0] >= 0.93 and res["onnx-int8"][0] >= 0.93


def test_default_backend_is_onnx_on_cpu_unless_overridden(model, posts, reference, tmp_path, monkeypatch):
    """ONNX Runtime is the CPU default (same labels, fastest: benchmarks/results/infer.md), torch on
    CUDA; $MMSA_BACKEND overrides. The default engine matches the reference too."""
    monkeypatch.delenv("MMSA_BACKEND", raising=False)
    assert default_backend(torch.device("cpu")) == "onnx" and default_backend(torch.device("cuda")) == "torch"
    engine = Engine(model, cache_dir=tmp_path)
    assert engine.backend == "onnx"
    assert_same(engine.predict(*posts), reference)
    monkeypatch.setenv("MMSA_BACKEND", "int8")
    assert default_backend(torch.device("cpu")) == "int8"


def test_no_posts_give_an_empty_prediction():
    """A shard can hold only rejected rows: scoring it must not fail."""
    from mmsa.infer import get_engine

    pred = get_engine("default").predict([], [])
    assert pred.probs.shape == pred.text_probs.shape == pred.image_probs.shape == (0, 3)


CACHED_ENGINE = """
import json, sys
import numpy as np
from mmsa.infer import get_engine
from mmsa.model import load_model

engine = get_engine("default", "onnx")
size = engine.image_size
images = [np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), None]
probs = engine.predict(["I love it, best day ever", ""], images).probs
print(json.dumps({"probs": probs.tolist(), "encoders_loaded": load_model("default")._encoders is not None,
                  "transformers_models": sorted(m for m in sys.modules if m.startswith("transformers.models"))}))
"""


def test_cached_onnx_graphs_score_without_loading_the_encoders(model, tmp_path):
    """Once the graphs and tokenizer are exported, a new process scores with them alone: the model's
    encoders are never loaded, no transformers model module is imported, and the answers are the same."""
    size = model.image_size
    images = [np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), None]
    expected = Engine(model, backend="onnx", cache_dir=tmp_path).predict(["I love it, best day ever", ""], images).probs
    env = dict(os.environ, MMSA_CACHE=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", CACHED_ENGINE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["encoders_loaded"] is False and out["transformers_models"] == []
    np.testing.assert_allclose(np.array(out["probs"]), expected, atol=1e-6)


def test_the_onnx_cache_key_follows_the_encoders_files(tmp_path):
    """A model whose encoder files change (here: one rewritten) gets a new key, so no stale graph is used;
    unchanged files give the same key without loading anything, even when touched (another install of the
    same backbone shares the graphs)."""
    from mmsa.model import SentimentModel, resolve_model_dir
    from synthetic import tiny_text_encoder

    folder = tmp_path / "model"
    shutil.copytree(resolve_model_dir("default"), folder)
    text = tiny_text_encoder(tmp_path / "bert")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "text_encoder": str(text)}))
    first = SentimentModel(folder).source_key()
    assert SentimentModel(folder).source_key() == first
    weights = next(text.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert SentimentModel(folder).source_key() == first
    state = load_file(str(weights))
    save_file({k: v + 1 for k, v in state.items()}, str(weights))
    changed = SentimentModel(folder)
    assert changed.source_key() != first and changed._encoders is None
