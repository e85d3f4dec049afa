"""Image work in worker processes (mmsa.images.processes): the same statuses, bytes and pixels as the thread path,
for good images and hostile servers alike; images come back through shared memory; a dead worker fails its
URLs (not the interpreter) and the next call gets fresh workers."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from imageserver import (
    Concurrency,
    drip,
    encode,
    endless,
    image_server,  # noqa: F401  (fixture)
    redirect,
    send,
    stall,
    textured_image,
)
from mmsa import cli
from mmsa.images import processes
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images
from mmsa.options import usable_cores

JPEG = encode(textured_image(640, 480), "JPEG", quality=85)
PNG = encode(textured_image(300, 200, seed=1), "PNG")


def config(**overrides) -> FetchConfig:
    values = dict(allow_hosts=("127.0.0.1",), connect_timeout=0.5, read_timeout=0.5, deadline=1.5, backoff=0.02,
                  max_retry_after=1.0, max_bytes=2_000_000, workers=4)
    values.update(overrides)
    return FetchConfig(**values)


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    processes.shutdown()


def hostile_items(server, run: str) -> list[tuple[str, str | None]]:
    """The same hostile URLs, under routes of their own for each run (a route's responses are used up)."""
    (server.root / "a.jpg").write_bytes(JPEG)
    (server.root / "b.png").write_bytes(PNG)
    routes = {
        "ok_jpeg": server.url("a.jpg"),
        "ok_png": server.url("b.png"),
        "not_found": server.route(f"/{run}nope", send(404)),
        "flaky": server.route(f"/{run}flaky", send(503), send(200, JPEG, "image/jpeg")),
        "drip": server.route(f"/{run}drip", drip(JPEG, interval=0.2)),
        "endless": server.route(f"/{run}big", endless()),
        "html": server.route(f"/{run}page", send(200, b"<html></html>", "text/html")),
        "to_blocked": server.route(f"/{run}hop", redirect("http://127.0.0.2:9/x.jpg")),
        "stall": server.route(f"/{run}stall", stall(5)),
    }
    items = [(name, url) for name, url in routes.items()]
    items += [("ftp", "ftp://example.com/a.jpg"), ("none", None), ("dup", server.url("a.jpg"))]
    return items


def test_processes_give_the_thread_paths_statuses_and_pixels(image_server, tmp_path):
    threads = fetch_images(hostile_items(image_server, "t"), config(), ImageCache(tmp_path / "t"), keep_images=True)
    items = hostile_items(image_server, "p")
    procs = fetch_images(items, config(processes=2), ImageCache(tmp_path / "p"), keep_images=True)
    assert [r.status for r in procs] == [r.status for r in threads]
    assert [r.status for r in procs] == ["ok", "ok", "http_404", "ok", "timeout", "too_large", "not_an_image",
                                         "blocked_address", "timeout", "unsupported_scheme", "no_image", "ok"]
    for a, b in zip(threads, procs):
        assert (a.post_id, a.image_key, a.http_code) == (b.post_id, b.image_key, b.http_code)
        if a.status != "timeout":  # how far a cut download got depends on the clock
            assert (a.bytes, a.attempts) == (b.bytes, b.attempts)
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert b.image.dtype == np.uint8 and np.array_equal(a.image, b.image)
    assert threads[3].attempts == procs[3].attempts == 2  # the 503 was retried in the worker as in a thread
    # The cache the workers wrote is the one the thread path reads: a rerun downloads nothing.
    again = fetch_images(items[:2], config(), ImageCache(tmp_path / "p"))
    assert [r.status for r in again] == ["ok", "ok"] and image_server.hit_count("/a.jpg") <= 3


def test_the_per_host_cap_holds_across_the_worker_processes(image_server, tmp_path):
    """3 downloads at most from one host however many processes and threads (shared host slots)."""
    probe = Concurrency(send(200, PNG, "image/png"), hold=0.15)
    urls = [image_server.route(f"/cap{n}", probe) for n in range(12)]
    results = fetch_images([(str(n), u) for n, u in enumerate(urls)], config(processes=2, workers=8, per_host=3),
                           ImageCache(tmp_path / "c"))
    assert all(r.status == "ok" for r in results)
    assert probe.peak == 3


def test_results_are_delivered_as_they_arrive(image_server, tmp_path):
    """on_result sees the quick images while a slow one is still downloading (the model is fed as they come)."""
    (image_server.root / "a.jpg").write_bytes(JPEG)
    slow = image_server.route("/slow", stall(1.0))
    seen = []
    items = [("slow", slow)] + [(f"p{i}", image_server.url("a.jpg") + f"?{i}") for i in range(6)]
    fetch_images(items, config(processes=2, deadline=3.0, read_timeout=2.0), ImageCache(tmp_path / "c"),
                 keep_images=True, on_result=lambda i, r: seen.append((time.monotonic(), r.post_id)))
    order = [post for _, post in seen]
    assert order[-1] == "slow" and len(order) == 7


def test_a_dead_worker_fails_its_urls_and_the_next_call_starts_anew(image_server, tmp_path):
    (image_server.root / "a.jpg").write_bytes(JPEG)
    slow = image_server.route("/held", stall(8))
    cfg = config(processes=2, deadline=10, read_timeout=10)
    fetch_images([("warm", image_server.url("a.jpg"))], cfg, ImageCache(tmp_path / "c"))  # workers started
    pids = processes.worker_pids()
    killer = threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids])
    killer.start()
    with pytest.raises(processes.WorkerDied):
        fetch_images([("a", slow), ("b", slow + "?2")], cfg, ImageCache(tmp_path / "c"))
    killer.join()
    result = fetch_images([("again", image_server.url("a.jpg") + "?3")], cfg, ImageCache(tmp_path / "c"), keep_images=True)
    assert result[0].status == "ok" and result[0].image.shape == (224, 224, 3)
    assert not set(pids) & set(processes.worker_pids())


def test_process_count_option():
    assert processes.resolve_processes(3) == 3 and processes.resolve_processes(0) == 0
    assert processes.resolve_processes(None) == (usable_cores() if usable_cores() > 2 else 0)
    parser = cli.build_parser()
    assert parser.parse_args(["fetch", "d.jsonl", "--cache", "c", "--fetch-processes", "2"]).fetch_processes == 2
    assert parser.parse_args(["fetch", "d.jsonl", "--cache", "c", "--fetch-processes", "auto"]).fetch_processes is None
    assert parser.parse_args(["score", "d.jsonl", "--db", "x", "--out", "o", "--fetch-processes", "0"]).fetch_processes == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["fetch", "d.jsonl", "--cache", "c", "--fetch-processes", "many"])
