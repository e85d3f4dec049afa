"""Where a scoring run's time goes, shard by shard, without Prefect in the way.

Runs mmsa.pipeline.score_shard over a generated dump's shards in T threads, as the score flow's
thread runner does (T=2), with F fetch threads per shard, and prints per configuration: wall
seconds, posts/s, and the shards' own stage seconds (fetch, waiting for the model, infer), next
to the same engine on the same posts alone. It answers "is the model slower inside the run than
alone, and why" (benchmarks/results/infer.md, GPU section) without the start-up of `mmsa score`.

    .venv/bin/python benchmarks/profile_shards.py --posts 5000 --threads 2 1 --fetch-workers 16 4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_infer import GpuSampler, make_dump  # noqa: E402
from mmsa import pipeline  # noqa: E402
from mmsa.data import load_jsonl, resolve_data_dir  # noqa: E402
from mmsa.demo import serve_folder  # noqa: E402
from mmsa.images.cache import ImageCache  # noqa: E402
from mmsa.images.config import FetchConfig  # noqa: E402
from mmsa.images.fetch import fetch_images  # noqa: E402
from mmsa.infer import get_engine  # noqa: E402
from mmsa.model import load_model  # noqa: E402


def run(dump_url: str, work: Path, threads: int, fetch_workers: int) -> dict:
    """One fresh run (new output and image cache) of every shard; its wall time and stage seconds."""
    shutil.rmtree(work, ignore_errors=True)
    opts = pipeline.RunOptions(db=str(work / "db.duckdb"), out=str(work / "out"), allow_hosts=("127.0.0.1",), force=True,
                               fetch=FetchConfig(workers=fetch_workers))
    t0 = time.perf_counter()
    prepared = pipeline.prepare(dump_url, opts)
    with GpuSampler() as gpu, ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda s: pipeline.score_shard(s, opts, "profile", prepared.key), prepared.shards))
    wall = time.perf_counter() - t0
    return {"wall": wall, "posts": sum(r.posts for r in results), "gpu": gpu.summary(), "shards": prepared.shards,
            "per_shard": [r.seconds["infer"] for r in results],
            **{k: sum(r.seconds[k] for r in results) for k in ("fetch", "infer_wait", "infer", "write")}}


def model_alone(shards: list[str], cache_dir: Path) -> tuple[float, list[float]]:
    """The run's engine on the same shards' texts and cached images (fetch_images finds them through the
    cache's URL index, with no request, and preprocesses them before the clock starts), one shard after another."""
    model = load_model("default")
    cache = ImageCache(cache_dir)
    config = FetchConfig(image_size=model.image_size, allow_hosts=("127.0.0.1",))
    engine = get_engine(model)
    per_shard = []
    for shard in shards:
        posts = pq.read_table(shard)
        items = list(zip(posts["post_id"].to_pylist(), posts["image_url"].to_pylist()))
        images = [r.image for r in fetch_images(items, config, cache, keep_images=True)]
        t0 = time.perf_counter()
        engine.predict(posts["text"].to_pylist(), images)
        per_shard.append(time.perf_counter() - t0)
    return sum(per_shard), per_shard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=5000)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="shards scored at once (the flow: 2)")
    ap.add_argument("--fetch-workers", type=int, nargs="+", default=[16], help="fetch threads per shard (default 16)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmsa-profile-shards")
    args = ap.parse_args()

    site = args.workdir / "site"
    texts = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl").texts
    engine = get_engine(load_model("default"))
    print(f"engine: {engine.device}, backend {engine.backend}, batch {engine.batch_size}", flush=True)
    with serve_folder(site) as base:
        dump = make_dump(site, base, args.posts, True, texts)
        url = f"{base}/{dump.name}"
        run(url, args.workdir / "warm", 2, 16)  # warm-up: CUDA context, kernels, ONNX sessions, page cache
        print("| shards at once | fetch threads | wall s | posts/s | fetch s (sum) | waiting for the model s | infer s (sum) "
              "| infer s per shard: first / median / max | GPU utilisation |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        last = None
        for threads in args.threads:
            for workers in args.fetch_workers:
                r = last = run(url, args.workdir / f"t{threads}-w{workers}", threads, workers)
                print(f"| {threads} | {workers} | {r['wall']:.1f} | {r['posts'] / r['wall']:.0f} | {r['fetch']:.1f} "
                      f"| {r['infer_wait']:.1f} | {r['infer']:.1f} | {r['per_shard'][0]:.2f} / {statistics.median(r['per_shard']):.2f} "
                      f"/ {max(r['per_shard']):.2f} | {r['gpu']} |", flush=True)
        total, per_shard = model_alone(last["shards"], args.workdir / f"t{args.threads[-1]}-w{args.fetch_workers[-1]}" / "out" / "_cache")
        print(f"\nModel alone on the same shards (same engine, cached images, one shard after another): {total:.1f} s, "
              f"{args.posts / total:.0f} posts/s; per shard first / median / max {per_shard[0]:.2f} / "
              f"{statistics.median(per_shard):.2f} / {max(per_shard):.2f} s", flush=True)


if __name__ == "__main__":
    main()
