"""Benchmark the targeted pass (the sentiment toward each brand a post names): what it adds to the model and to
`mmsa score`, with one brand per post.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_targeted.py [--posts 3000] [--runs 3] [--out benchmarks/results/targeted.md]
    .venv/bin/python benchmarks/bench_targeted.py --model large --out benchmarks/results/targeted-large.md

Posts: the first N distinct Twitter-2017 / Dong 2014 texts of ../shared/data/targeted/ as a flat, text-only JSONL dump
(text-only is the worst case: the text pass is then the whole model), each with its target as the post's `brand`
(found in the text by its name, so every post gets one targeted row). Two models that differ only in the target
head: the shipped model (`--model`: default, or large, which borrows the default's head and so also runs the
default's encoder, up to the states that head reads, for posts that name a brand), and a copy of its folder whose config.json drops `target_head` /
`target_model` (brands then get the post's label).
1. The model alone: `Engine.predict` over the texts with and without their targets (same engine, runs interleaved,
   after a warm-up); median seconds.
2. `mmsa score` whole (a fresh process, output and database each run; the ONNX graphs from the cache, warmed by one
   untimed run of each model), the two models' runs interleaved; median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MMSA_DATA", REPO.parent / "shared" / "data"))


def posts(n: int) -> list[dict]:
    """The first n distinct texts with their target."""
    seen, out = set(), []
    for name in ("twitter2017/train", "dong2014/train"):
        for line in (DATA / "targeted" / f"{name}.jsonl").open():
            row = json.loads(line)
            if row["text"] not in seen:
                seen.add(row["text"])
                out.append({"text": row["text"], "brand": row["target"]})
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} distinct texts")


def model_alone(rows: list[dict], runs: int, model: str) -> dict[str, list[float]]:
    from mmsa.brands import find_spans
    from mmsa.infer import get_engine

    engine = get_engine(model)
    texts = [r["text"] for r in rows]
    targets = [[find_spans(r["text"], r["brand"])] for r in rows]
    engine.predict(texts[:256], [None] * 256, targets=targets[:256])  # warm-up
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(runs):
        for name, t in (("without", None), ("with", targets)):
            t0 = time.perf_counter()
            engine.predict(texts, [None] * len(texts), targets=t)
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def score_runs(rows: list[dict], runs: int, work: Path, model: str) -> dict[str, list[float]]:
    from mmsa.model import resolve_model_dir

    plain = work / "no-target-head"
    shutil.copytree(resolve_model_dir(model), plain)
    cfg = json.loads((plain / "config.json").read_text())
    for k in ("target_head", "target_model"):
        cfg.pop(k, None)
    (plain / "config.json").write_text(json.dumps(cfg))
    dump = work / "posts.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"t{i}", "created_at": "2026-11-20T10:00:00Z", **r}) + "\n"
                            for i, r in enumerate(rows)))
    models = {"without": str(plain), "with": model}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(-1, runs):  # run -1 warms the ONNX cache and the disk; not counted
        for name, model in models.items():
            t0 = time.perf_counter()
            subprocess.run([str(REPO / ".venv" / "bin" / "mmsa"), "score", str(dump), "--model", model, "--db",
                            str(work / f"{name}-{r}.duckdb"), "--out", str(work / f"out-{name}-{r}")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r >= 0:
                seconds[name].append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="default", help="a shipped model with a target head, its own or borrowed")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "targeted.md")
    args = ap.parse_args()

    rows = posts(args.posts)
    alone = model_alone(rows, args.runs, args.model)
    with tempfile.TemporaryDirectory(prefix="mmsa-bench-targeted-") as tmp:
        score = score_runs(rows, args.runs, Path(tmp), args.model)
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in (("alone", alone), ("score", score))}

    def row(what: str, d: dict, m: dict) -> list[str]:
        return [f"| {what}, {name} target head | " + ", ".join(f"{s:.1f} s" for s in d[name]) + f" | {m[name]:.1f} s |"
                for name in ("without", "with")]

    added = {k: m["with"] / m["without"] - 1 for k, m in med.items()}
    lines = [
        f"# The targeted pass: what the sentiment toward each brand costs (`--model {args.model}`)", "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"shared with other work (load average {os.getloadavg()[0]:.1f}); Python {platform.python_version()}. "
        f"Generated by `benchmarks/bench_targeted.py --model {args.model} --posts {args.posts} --runs {args.runs}`.", "",
        "Method: the module docstring of `benchmarks/bench_targeted.py` ({:,} text-only posts, one brand each).".format(args.posts), "",
        "| what | per run | median |", "| --- | --- | ---: |",
        *row("model alone (`Engine.predict`)", alone, med["alone"]),
        *row("`mmsa score` (whole command)", score, med["score"]), "",
        f"**With one brand per text-only post, the targeted pass adds {added['score']:.1%} to `mmsa score` and "
        f"{added['alone']:.1%} to the model alone** (target: `mmsa score` at most 25% slower). Posts with images cost "
        "the model several times more per post (benchmarks/results/infer.md), so the share falls there.", "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
