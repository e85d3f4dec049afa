"""CPU-seconds per post by stage of a scoring run, for the cost figures in docs/operations.md.

    .venv/bin/python benchmarks/bench_stage_cpu.py [--posts 1000] [--out benchmarks/results/stage_cpu.md]

A generated dump (bench_infer.make_dump: MVSA-Single dev texts, one 224-480 px JPEG per post, served from
127.0.0.1) goes through the pipeline's stages one after the other, in this process, each timed with
time.process_time() (CPU of all this process's threads) and the CPU of children (worker processes):
read + cut into shards (pipeline.prepare), fetch (download, decode, resize, cache; threads, then worker
processes), the model (the default backend, per 512-post shard), write (the Parquet partitions), load (DuckDB
upsert). The fixed cost of one `mmsa score` command (interpreter, imports, Prefect's API server, model load) is
that of a 4-post text-only run, from the same machine's `bench_infer.py` (b).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "stage_cpu.md")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmsa-stage-cpu")
    args = ap.parse_args()

    from bench_infer import make_dump

    from mmsa import pipeline, store
    from mmsa.data import load_jsonl, resolve_data_dir
    from mmsa.demo import serve_folder
    from mmsa.images import processes as procs
    from mmsa.images.cache import ImageCache
    from mmsa.images.config import FetchConfig
    from mmsa.images.fetch import fetch_images
    from mmsa.infer import get_engine
    from mmsa.model import load_model

    texts = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl").texts
    site = args.workdir / "site"
    n = args.posts
    model = load_model("default")
    engine = get_engine(model)
    engine.warm_up()
    rows: dict[str, float] = {}
    with serve_folder(site) as base:
        dump = make_dump(site, base, n, True, texts)
        run = args.workdir / f"run-{time.time_ns()}"
        opts = pipeline.RunOptions(db=str(run / "db.duckdb"), out=str(run / "out"), allow_hosts=("127.0.0.1",))
        c = cpu()
        prepared = pipeline.prepare(str(dump), opts)
        rows["read + cut into shards"] = cpu() - c
        import pyarrow.parquet as pq

        shards = [pq.read_table(s) for s in prepared.shards]
        items = [(pid, url) for t in shards for pid, urls in zip(t["post_id"].to_pylist(), t["image_urls"].to_pylist())
                 for url in urls or [None]]
        fetched = {}
        for name, processes in (("threads", 0), ("2 worker processes", 2)):
            c = cpu()
            fetched[name] = fetch_images(items, FetchConfig(image_size=model.image_size, allow_hosts=("127.0.0.1",),
                                                            processes=processes),
                                         ImageCache(run / f"cache-{processes}"), keep_images=True)
            procs.shutdown()  # the workers' and the fork server's CPU, counted as children once they are waited for
            rows[f"fetch: download, decode, resize, cache ({name})"] = cpu() - c
        images = [r.image for r in fetched["threads"]]
        c = cpu()
        preds, start = [], 0
        for t in shards:
            k = t.num_rows
            preds.append(engine.predict(t["text"].to_pylist(), images[start:start + k]))
            start += k
        rows[f"model ({engine.backend} on {engine.device})"] = cpu() - c
        c = cpu()
        files = []
        start = 0
        for i, (t, pred) in enumerate(zip(shards, preds)):
            k = t.num_rows
            statuses = [r.status for r in fetched["threads"][start:start + k]]
            start += k
            table = pipeline.scored_table(t, statuses, pred, model.version, "bench", None)
            files += store.write_partitions(table, Path(opts.out), f"bench-{i:05d}")
        rows["write Parquet partitions"] = cpu() - c
        c = cpu()
        con = store.connect(opts.db)
        store.load_scored(con, files)
        con.close()
        rows["load into DuckDB"] = cpu() - c

    lines = ["# CPU-seconds per post by stage", "",
             f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
             f"{platform.python_version()}; shared with other work. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             f"Method: `benchmarks/bench_stage_cpu.py --posts {n}`: {n} posts (MVSA-Single dev texts, one 224-480 px JPEG "
             "each, served from 127.0.0.1), each stage run alone in one process, its CPU (all threads, and worker "
             "processes once waited for) by process_time and getrusage.", "",
             "| stage | CPU s | CPU ms per post |", "| --- | ---: | ---: |"]
    for stage, seconds in rows.items():
        lines.append(f"| {stage} | {seconds:.2f} | {1000 * seconds / n:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
