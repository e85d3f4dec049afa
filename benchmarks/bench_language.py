"""Benchmark language identification (mmsa.language): how often it is right on short tweets in the eight
XLM-T languages, and what it adds to `mmsa score` on text-only posts.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_language.py [--posts 1500 4500] [--runs 3] [--out benchmarks/results/language.md]

1. Accuracy: `mmsa.language.identify` on every tweet of ../shared/data/multilingual/xlmt/*/val.jsonl (324 per
   language; train.jsonl chose the rules, val was read once they were set): per language, the share given its
   own code, the share given none, and the commonest wrong codes.
2. English kept English: the share of ordinary English tweets identified as `en` (and as `hi`, the model's
   one way to lose them), over sets the romanised-Hindi model never saw in training (benchmarks/train_language.py:
   SemEval 2013-2015 and 2016 dev, MVSA-Single's texts, which hold some posts in other languages, Dong 2014's
   lower-cased tokenised tweets, Twitter-2015's tokenised ones).
3. Cost: `identify` over the larger number of English tweets (SemEval's train file), in passes after its
   model's load (timed once, first, as a run pays it); median microseconds per post.
4. Against: whole `mmsa score` runs (a fresh process, output and database each run; Prefect and the model
   started, the ONNX graphs from the cache, warmed by one untimed run) over the first N of those tweets as a
   flat, text-only JSONL dump, at two sizes, runs interleaved; median seconds. Identification's share of a
   run = (load + N x per post) / its median seconds; of each further post = per post / (the seconds between
   the sizes / the posts between them), the share a long dump tends to.
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


def english_kept() -> list[dict]:
    from mmsa import language
    from train_language import load_data

    _, _, held_out, _ = load_data()
    rows = []
    for name, texts in held_out.items():
        got = Counter(language.identify(t) for t in texts)
        rows.append({"set": name, "posts": len(texts), "en": got["en"] / len(texts), "hi": got["hi"] / len(texts),
                     "none": got[None] / len(texts)})
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


def score_runs(texts: list[str], sizes: list[int], runs: int, work: Path) -> dict[int, list[float]]:
    """Per size, the wall seconds of each `mmsa score` run over the first `size` texts."""
    dumps = {}
    for n in sizes:
        dumps[n] = work / f"tweets-{n}.jsonl"
        dumps[n].write_text("".join(json.dumps({"post_id": f"t{i}", "created_at": "2026-11-20T10:00:00Z", "text": t})
                                    + "\n" for i, t in enumerate(texts[:n])))
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(-1, runs):  # run -1 warms the ONNX cache and the disk; not counted
        for n in sizes:
            t0 = time.perf_counter()
            subprocess.run([str(REPO / ".venv" / "bin" / "mmsa"), "score", str(dumps[n]), "--db",
                            str(work / f"{n}-{r}.duckdb"), "--out", str(work / f"out-{n}-{r}")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r >= 0:
                seconds[n].append(time.perf_counter() - t0)
            if r == -1:
                break
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, nargs=2, default=[1500, 4500])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "language.md")
    args = ap.parse_args()

    small, large = sorted(args.posts)
    texts = english_tweets(large)
    load, per_post = identify_cost(texts, args.runs)
    acc = accuracy()
    kept = english_kept()
    with tempfile.TemporaryDirectory(prefix="mmsa-bench-lang-") as tmp:
        score = score_runs(texts, [small, large], args.runs, Path(tmp))
    lid_us = statistics.median(per_post)
    median = {n: statistics.median(s) for n, s in score.items()}
    further_ms = (median[large] - median[small]) / (large - small) * 1e3
    from importlib.metadata import version

    lines = [
        "# Language identification: accuracy on short tweets, and its cost in `mmsa score`", "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"shared with other work (load average {os.getloadavg()[0]:.1f}); Python {platform.python_version()}, "
        f"py3langid {version('py3langid')}. Generated by `benchmarks/bench_language.py --posts {small} {large} --runs {args.runs}`.",
        "", "Method: the module docstring of `benchmarks/bench_language.py`.", "",
        "## Accuracy on XLM-T val (324 tweets per language)", "",
        "| language | code | stored `lang` right | none (no letters, or one Latin word) | commonest wrong codes |",
        "| --- | --- | ---: | ---: | --- |",
        *[f"| {r['language']} | {r['code']} | **{r['right']:.1%}** | {r['none']:.1%} | {r['wrong']} |" for r in acc],
        "", "## English kept English (sets the romanised-Hindi model never saw)", "",
        "| set | posts | `en` | `hi` | none |", "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {r['set']} | {r['posts']:,} | **{r['en']:.1%}** | {r['hi']:.2%} | {r['none']:.1%} |" for r in kept],
        "", "## Cost on text-only posts", "",
        "| what | per run | median | identification's share |", "| --- | --- | ---: | ---: |",
        f"| identifier load (once per process) | | {load:.2f} s | |",
        f"| `identify`, {large:,} English tweets, per post | " + ", ".join(f"{p:.0f} µs" for p in per_post)
        + f" | {lid_us:.0f} µs | |",
        *[f"| `mmsa score`, {n:,} of them (whole command) | " + ", ".join(f"{s:.1f} s" for s in score[n])
          + f" | {median[n]:.1f} s | {(load + lid_us * n / 1e6) / median[n]:.1%} |" for n in (small, large)],
        f"| each further post of a run: ({median[large]:.1f} − {median[small]:.1f}) s / {large - small:,} | | "
        f"{further_ms:.2f} ms | {lid_us / 1e3 / further_ms:.1%} |",
        "", f"**Identification adds {(load + lid_us * large / 1e6) / median[large]:.1%} to `mmsa score` on {large:,} "
        f"text-only posts, and {lid_us / 1e3 / further_ms:.1%} to each further post** (target: at most 5%).", "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
