"""The GPU JPEG path (mmsa.images.gpudecode) without a GPU: its batching and fallbacks run on torchvision's CPU decoder
(device="cpu"); `--gpu-decode` is plumbed to the fetch, and without a GPU it changes nothing."""

import threading

import numpy as np
import pytest

from imageserver import encode, image_server, textured_image  # noqa: F401  (fixture)
from mmsa import cli
from mmsa.images import decode, gpudecode
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images

JPEGS = [encode(textured_image(400 + 10 * i, 300, seed=i), "JPEG", quality=90) for i in range(12)]
PNG = encode(textured_image(300, 200, seed=1), "PNG")


def test_batches_from_many_threads_match_the_cpu_path_closely():
    decoder = gpudecode.BatchDecoder(device="cpu", batch=8, linger=0.05)
    out = [None] * len(JPEGS)

    def work(i):
        out[i] = decoder.preprocess(JPEGS[i], 224, 50_000_000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(JPEGS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decoder.close()
    assert decoder.images == len(JPEGS) and decoder.batches < len(JPEGS)  # gathered into batches
    for data, image in zip(JPEGS, out):
        cpu = decode.preprocess(data, 224, 50_000_000)
        assert image.shape == cpu.shape == (224, 224, 3) and image.dtype == np.uint8
        # A full-size decode then one resize, against the CPU path's reduced-scale (draft) decode: close, not equal.
        assert np.abs(image.astype(int) - cpu.astype(int)).mean() < 6


def test_what_the_gpu_does_not_take_goes_the_cpu_way_with_its_statuses():
    decoder = gpudecode.BatchDecoder(device="cpu")
    try:
        assert np.array_equal(decoder.preprocess(PNG, 64, 10**8), decode.preprocess(PNG, 64, 10**8))
        with pytest.raises(decode.TooManyPixelsError):
            decoder.preprocess(JPEGS[0], 64, 1000)
        with pytest.raises(decode.DecodeError):
            decoder.preprocess(JPEGS[0][: len(JPEGS[0]) // 2], 64, 10**8)
        with pytest.raises(decode.NotAnImageError):
            decoder.preprocess(b"<html>", 64, 10**8)
    finally:
        decoder.close()


def test_a_bad_image_in_a_batch_does_not_fail_the_others():
    images = gpudecode.decode_resize(JPEGS[:2], [32, 32], "cpu")
    assert [i.shape for i in images] == [(32, 32, 3)] * 2
    decoder = gpudecode.BatchDecoder(device="cpu", batch=4, linger=0.2)
    results = {}
    data = {"good": JPEGS[1], "bad": JPEGS[2][:-400]}

    def work(name):
        try:
            results[name] = decoder.preprocess(data[name], 32, 10**8)
        except decode.ImageError as exc:
            results[name] = exc

    threads = [threading.Thread(target=work, args=(n,)) for n in data]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decoder.close()
    assert results["good"].shape == (32, 32, 3)
    assert isinstance(results["bad"], (decode.DecodeError, np.ndarray))  # libjpeg may pad a cut tail


def test_gpu_decode_option_is_plumbed_and_falls_back_without_a_gpu(image_server, tmp_path, monkeypatch):
    (image_server.root / "a.jpg").write_bytes(JPEGS[0])
    items = [("p", image_server.url("a.jpg"))]
    cfg = dict(allow_hosts=("127.0.0.1",), workers=2)
    plain = fetch_images(items, FetchConfig(**cfg), ImageCache(tmp_path / "a"), keep_images=True)
    if not gpudecode.available():  # this machine: the option changes nothing
        same = fetch_images(items, FetchConfig(gpu_decode=True, **cfg), ImageCache(tmp_path / "b"), keep_images=True)
        assert np.array_equal(plain[0].image, same[0].image)
    # With a "GPU" (torchvision's CPU decoder standing in), the fetch decodes through the batch decoder.
    made = []
    monkeypatch.setattr(gpudecode, "available", lambda device="cuda": True)
    real = gpudecode.BatchDecoder
    monkeypatch.setattr(gpudecode, "BatchDecoder", lambda: made.append(real(device="cpu")) or made[-1])
    via = fetch_images(items, FetchConfig(gpu_decode=True, **cfg), ImageCache(tmp_path / "c"), keep_images=True)
    assert via[0].status == "ok" and made and made[0].images == 1
    assert np.abs(via[0].image.astype(int) - plain[0].image.astype(int)).mean() < 6
    args = cli.build_parser().parse_args(["score", "d.jsonl", "--db", "x", "--out", "o", "--gpu-decode"])
    assert args.gpu_decode is True
