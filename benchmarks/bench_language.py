"""Benchmark language identification (mmsa.language): how often it is right on short tweets in the eight
XLM-T languages, and what it adds to `mmsa score` on text-only posts.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_language.py [--posts 3000] [--runs 3] [--out benchmarks/results/language.md]

1. Accuracy: `mmsa.language.identify` on every tweet of ../shared/data/multilingual/xlmt/*/val.jsonl (324 per
   language; train.jsonl chose the rules, val was read once they were set): per language, the share given its
   own code, the share given none, and the commonest wrong codes.
2. Cost: `identify` over N English tweets (SemEval's train file), its model already loaded, passes
   interleaved with nothing else; median microseconds per post; plus the model's load, once per process.
3. Against: whole `mmsa score` runs (a fresh process, output and database each run; Prefect, the model and
   the ONNX graphs from the shared cache included) over the same N tweets as a flat, text-only JSONL dump;
   median seconds per post. Identification's share = (load + N x per post) / the command's median seconds.
   There is no switch to score without identification: a run that skipped it would guess at every language.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MMSA_DATA", REPO.parent / "shared" / "data"))
XLMT = {"arabic": "ar", "english": "en", "french": "fr", "german": "de", "hindi": "hi", "italian": "it",
        "portuguese": "pt", "spanish": "es"}


def accuracy(split: str = "val") -> list[dict]:
    from mmsa import language

    rows = []
    for name, code in XLMT.items():
        texts = [json.loads(line)["text"] for line in (DATA / "multilingual" / "xlmt" / name / f"{split}.jsonl").open()]
        got = [language.identify(t) for t in texts]
        wrong = Counter(g or "none" for g in got if g != code)
        rows.append({"language": name, "code": code, "posts": len(texts),
                     "right": sum(g == code for g in got) / len(texts), "none": sum(g is None for g in got) / len(texts),
                     "wrong": ", ".join(f"{k} {v}" for k, v in wrong.most_common(4))})
    return rows


def english_tweets(n: int) -> list[str]:
    texts = []
    with (DATA / "semeval2017_4a" / "train.jsonl").open() as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def identify_cost(texts: list[str], runs: int) -> tuple[float, list[float]]:
    """(seconds to load the identifier, per run: microseconds per post)."""
    from mmsa import language

    t0 = time.perf_counter()
    language.identify("warm up: loads the model")
    load = time.perf_counter() - t0
    per_post = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for t in texts:
            language.identify(t)
        per_post.append((time.perf_counter() - t0) / len(texts) * 1e6)
    return load, per_post


def score_runs(texts: list[str], runs: int, work: Path) -> list[float]:
    dump = work / "tweets.jsonl"
    dump.write_text("".join(json.dumps({"post_id": f"t{i}", "created_at": "2026-11-20T10:00:00Z", "text": t}) + "\n"
                            for i, t in enumerate(texts)))
    seconds = []
    for r in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(REPO / ".venv" / "bin" / "mmsa"), "score", str(dump), "--db", str(work / f"r{r}.duckdb"),
                        "--out", str(work / f"out{r}")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "language.md")
    args = ap.parse_args()

    acc = accuracy()
    texts = english_tweets(args.posts)
    load, per_post = identify_cost(texts, args.runs)
    with tempfile.TemporaryDirectory(prefix="mmsa-bench-lang-") as tmp:
        score = score_runs(texts, args.runs, Path(tmp))
    lid_s = load + statistics.median(per_post) * len(texts) / 1e6
    score_s = statistics.median(score)
    from importlib.metadata import version

    lines = [
        "# Language identification: accuracy on short tweets, and its cost in `mmsa score`", "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"shared with other work (load average {os.getloadavg()[0]:.1f}); Python {platform.python_version()}, "
        f"py3langid {version('py3langid')}. Generated by `benchmarks/bench_language.py --posts {args.posts} --runs {args.runs}`.",
        "", "Method: the module docstring of `benchmarks/bench_language.py`.", "",
        "## Accuracy on XLM-T val (324 tweets per language)", "",
        "| language | code | stored `lang` right | none (no letters, or one Latin word) | commonest wrong codes |",
        "| --- | --- | ---: | ---: | --- |",
        *[f"| {r['language']} | {r['code']} | **{r['right']:.1%}** | {r['none']:.1%} | {r['wrong']} |" for r in acc],
        "", "## Cost on text-only posts", "",
        "| what | per run | median | per post |", "| --- | --- | ---: | ---: |",
        f"| identifier load (once per process) | | {load:.2f} s | |",
        f"| `identify`, {len(texts):,} English tweets | " + ", ".join(f"{p:.0f} µs" for p in per_post)
        + f" | {statistics.median(per_post):.0f} µs/post | {statistics.median(per_post):.0f} µs |",
        f"| `mmsa score`, the same {len(texts):,} tweets (whole command) | " + ", ".join(f"{s:.1f} s" for s in score)
        + f" | {score_s:.1f} s | {score_s / len(texts) * 1e3:.2f} ms |",
        "", f"**Identification adds {lid_s:.2f} s to a {score_s:.1f} s run: {lid_s / score_s:.1%}** "
        f"(of the run without it, {lid_s / (score_s - lid_s):.1%}; target: at most 5%).", "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
