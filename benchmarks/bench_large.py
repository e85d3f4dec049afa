"""What a post costs on CPU under the shipped default (MiniLM-L6 + EfficientNet-Lite2) and under `--model large`
(all-mpnet-base-v2 + EfficientNet-Lite2, issue 35), side by side in one run.

Run on demand (needs `make install-large`; not part of the test suite):

    nice -n 10 .venv/bin/python benchmarks/bench_large.py [--posts 256] [--runs 3] [--out benchmarks/results/large.md]

The scoring engine (mmsa.infer.Engine, one thread) on the first --posts MVSA-Single dev posts, as text-only posts
and as posts with their image (decoded beforehand); torch and onnx backends; CPU seconds of the process (and wall
time) per post, median of --runs runs, the engines interleaved in every run. What each model scores is in
results/compare.md (the same CV table); this page is its cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmsa.data import load_image, read_rows, resolve_data_dir  # noqa: E402
from mmsa.infer import Engine  # noqa: E402
from mmsa.model import load_model  # noqa: E402

MODELS = ("default", "large")


def cost(models: dict, posts: int, runs: int) -> dict:
    dev = resolve_data_dir() / "mvsa_single" / "dev.jsonl"
    rows = read_rows(dev)[:posts]
    texts = [r["text"] for r in rows]
    size = load_model("default").image_size
    images = [load_image(dev.parent / r["image"], size) for r in rows]
    kinds = {"text only": [None] * len(texts), "with image": images}
    engines = {(name, backend): Engine(m, backend=backend, threads=1)
               for name, m in models.items() for backend in ("torch", "onnx")}
    # torch's eager EfficientNet is not how a CPU scores images (benchmarks/results/infer.md): onnx only there
    plan = [(name, backend, kind) for name, backend in engines for kind in kinds
            if (backend, kind) != ("torch", "with image")]
    for e in engines.values():  # warm-up: graphs exported and loaded, first-call allocations done
        e.predict(texts[:32], images[:32])
    cpu, wall = ({key: [] for key in plan} for _ in range(2))
    for _ in range(runs):
        for name, backend, kind in plan:
            c0, w0 = time.process_time(), time.perf_counter()
            engines[name, backend].predict(texts, kinds[kind])
            cpu[name, backend, kind].append((time.process_time() - c0) / len(texts) * 1e3)
            wall[name, backend, kind].append((time.perf_counter() - w0) / len(texts) * 1e3)
    tokens = {name: float(np.mean([len(x) for x in next(e for k, e in engines.items() if k[0] == name).tokenize(texts)]))
              for name in models}
    return {"posts": len(texts), "runs": runs, "mean_tokens": tokens,
            "cpu_ms": {" | ".join(k): statistics.median(v) for k, v in cpu.items()},
            "wall_ms": {" | ".join(k): statistics.median(v) for k, v in wall.items()},
            "cpu_ms_runs": {" | ".join(k): v for k, v in cpu.items()}}


def _when(part: dict) -> str:
    """How a part was run: its command, its dates and the machine's load around it."""
    return (f"Command: `{part['command']}`; {part['started']} to {part['finished']} UTC; load average (1/5/15 min) "
            f"{part['load_start']} at the start, {part['load_end']} at the end.")


def page(res: dict) -> str:
    c = res["cost"]
    lines = [
        "# What a post costs: the default model against `--model large`",
        "",
        "**What.** CPU time per post of the two shipped models, side by side in one run, on text-only posts and on "
        "posts with an image. What each scores: results/compare.md (both in the same CV table) and the model cards.",
        "",
        f"**Machine.** {res['machine']}, shared with other developers' work; run under `nice -n 10`.",
        "",
        f"**Method.** The scoring engine (`mmsa.infer.Engine`) with one thread, on the first {c['posts']} MVSA-Single "
        "dev posts, scored as text-only posts and (onnx, the CPU default) with their images (decoded and resized "
        f"beforehand); the process's CPU time per post, median of {c['runs']} runs after a warm-up, all engines "
        "interleaved in every run. `default`: " + c["versions"]["default"] + " (MiniLM-L6, 22M parameters, + "
        "EfficientNet-Lite2); `large`: " + c["versions"]["large"] + " (all-mpnet-base-v2, 110M, + the same "
        "EfficientNet-Lite2). Mean tokens per post: " + ", ".join(f"{n} {t:.1f}" for n, t in c["mean_tokens"].items()) + ".",
        "",
        _when(c),
        "",
        "| backend | posts | default CPU ms/post | large CPU ms/post | ratio | default wall ms/post | large wall ms/post |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backend, kind in (("torch", "text only"), ("onnx", "text only"), ("onnx", "with image")):
        d, m = (c["cpu_ms"][f"{n} | {backend} | {kind}"] for n in MODELS)
        dw, mw = (c["wall_ms"][f"{n} | {backend} | {kind}"] for n in MODELS)
        lines.append(f"| {backend} | {kind} | {d:.1f} | {m:.1f} | {m / d:.1f}x | {dw:.1f} | {mw:.1f} |")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None, help="results page to write (the numbers as JSON beside it)")
    args = ap.parse_args()
    argv = sys.argv[1:]
    if "--out" in argv:  # where the page went is not part of the method
        del argv[argv.index("--out") : argv.index("--out") + 2]
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                      f"torch {torch.__version__}"}
    meta = {"command": "nice -n 10 .venv/bin/python benchmarks/bench_large.py " + " ".join(argv),
            "started": _now(), "load_start": _load()}
    models = {name: load_model(name) for name in MODELS}
    res["cost"] = cost(models, args.posts, args.runs) | meta | {"finished": _now(), "load_end": _load(),
                                                                "versions": {n: m.version for n, m in models.items()}}
    text = page(res)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
