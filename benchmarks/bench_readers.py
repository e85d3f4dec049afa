"""Benchmark reading a Reddit dump the way `mmsa score 'dir/*.jsonl.zst' --source-format reddit --brands FILE`
does: records/s and peak memory of the source stage at two sizes, and the scoring rate of whole runs.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_readers.py [--sizes 10000 100000] [--runs 3] [--score-records 600]
                                                 [--score-runs 3] [--out benchmarks/results/readers.md]

1. Writes synthetic Reddit submissions (Arctic Shift's fields; a third galleries of 2-6 pictures, a
   quarter i.redd.it links with their previews, a tenth comments, a third of the titles mentioning one
   of 5 brands), split over 8 zstd files per size, and a brands file.
2. Reading: for each size, `pipeline.prepare` (what `mmsa score` runs first: the glob resolved, every
   record read, validated, tagged, written to shard files) in a fresh process per run, runs of the sizes
   interleaved; wall seconds and the process's peak RSS (ru_maxrss). Median over runs.
3. Scoring: `mmsa score` over a smaller dump of the same kind whose pictures are served from
   127.0.0.1 (tests/imageserver.py), fresh output and image cache each run. Median posts/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

BRANDS = {
    "acme": {"keywords": ["acme", "acme corp"], "hashtags": ["#acme"], "handles": ["@acmecorp"]},
    "globex": {"keywords": ["globex"], "regexes": [r"\bglobex ?(one|pro)\b"]},
    "initech": {"keywords": ["initech"]},
    "umbrella": {"keywords": ["umbrella corp"], "hashtags": ["#umbrella"]},
    "hooli": {"keywords": ["hooli"], "handles": ["@hooli"]},
}
WORDS = ("the new one is great, honestly better than I expected after the update but the battery "
         "drains fast and support never answered my ticket so I am not sure what to think").split()
MENTIONS = ["acme", "Acme Corp", "#acme", "globex pro", "Globex", "initech", "umbrella corp", "@hooli", "#umbrella"]


def submission(i: int, rng: random.Random, image_base: str) -> dict:
    """One Reddit record with the fields Arctic Shift dumps carry (most of them unused by the reader)."""
    created = 1761955200 + i * 7
    words = rng.choices(WORDS, k=rng.randint(6, 14))
    if rng.random() < 0.33:
        words.insert(rng.randrange(len(words)), rng.choice(MENTIONS))
    rec = {
        "id": f"{i:07x}", "name": f"t3_{i:07x}", "created_utc": created if i % 2 else str(created),
        "title": " ".join(words).capitalize(), "selftext": "", "author": f"user_{rng.randrange(5000)}",
        "subreddit": rng.choice(["gadgets", "pics", "BuyItForLife", "technology"]), "score": rng.randint(-5, 900),
        "num_comments": rng.randint(0, 200), "num_crossposts": rng.randint(0, 3), "over_18": False,
        "permalink": f"/r/pics/comments/{i:07x}/post/", "domain": "i.redd.it", "thumbnail": "default",
        "all_awardings": [], "author_flair_text": None, "link_flair_text": "Discussion", "gilded": 0,
        "is_self": False, "retrieved_on": created + 3600, "upvote_ratio": round(rng.uniform(0.5, 1), 2),
    }
    kind = rng.random()
    if kind < 0.33:
        n = rng.randint(2, 6)
        ids = [f"m{i}x{k}" for k in range(n)]
        rec["is_gallery"] = True
        rec["media_metadata"] = {m: {"status": "valid", "e": "Image", "m": "image/jpg",
                                     "s": {"x": 1080, "y": 1350, "u": f"{image_base}/{(i * 7 + k) % 50}.jpg?width=1080&amp;format=pjpg&amp;s={m}"},
                                     "p": [{"x": 108, "y": 135, "u": f"{image_base}/{(i * 7 + k) % 50}.jpg?width=108&amp;s=p"}]}
                                 for k, m in enumerate(ids)}
        rec["gallery_data"] = {"items": [{"media_id": m, "id": k} for k, m in enumerate(ids)]}
    elif kind < 0.58:
        rec["url"] = f"{image_base}/{i % 50}.jpg"
        rec["post_hint"] = "image"
        rec["preview"] = {"images": [{"source": {"url": f"{image_base}/{i % 50}.jpg?auto=webp&amp;s=abc", "width": 1080,
                                                 "height": 1080}, "resolutions": [], "id": "x"}], "enabled": True}
    else:
        rec["is_self"] = True
        rec["selftext"] = " ".join(rng.choices(WORDS, k=rng.randint(10, 60)))
    return rec


def comment(i: int) -> dict:
    return {"id": f"c{i:07x}", "body": "agreed", "link_id": f"t3_{i:07x}", "parent_id": f"t3_{i:07x}",
            "created_utc": 1761955200 + i * 7, "author": "someone", "subreddit": "pics", "score": 1}


def write_dump(folder: Path, records: int, image_base: str, files: int = 8, seed: int = 0) -> Path:
    import zstandard

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-records // files)
    compressor = zstandard.ZstdCompressor(level=3)
    for f in range(files):
        lines = []
        for i in range(f * per_file, min(records, (f + 1) * per_file)):
            lines.append(json.dumps(comment(i) if i % 10 == 9 else submission(i, rng, image_base)))
        with (folder / f"RS_part{f:02d}.jsonl.zst").open("wb") as fh, compressor.stream_writer(fh) as out:
            out.write(("\n".join(lines) + "\n").encode())
    (folder / "brands.yaml").write_text(json.dumps(BRANDS))
    return folder


READ_ONE = """
import json, resource, sys, time
from mmsa import pipeline, source
dump, out, brands = sys.argv[1:4]
t0 = time.perf_counter()
opts = pipeline.RunOptions(db="unused", out=out, reading=source.ReadOptions.build("reddit", None, brands))
p = pipeline.prepare(dump, opts)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "posts": p.posts_in - p.rejected, "rejected": p.rejected, "not_posts": p.not_posts,
                  "shards": len(p.shards), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def read_once(folder: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-c", READ_ONE, f"{folder}/*.jsonl.zst", str(work), str(folder / "brands.yaml")]
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    return result


def score_once(folder: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect")}
    cmd = [str(REPO / ".venv/bin/mmsa"), "score", f"{folder}/*.jsonl.zst", "--source-format", "reddit",
           "--brands", str(folder / "brands.yaml"), "--db", str(work / "m.duckdb"), "--out", str(work / "out"),
           "--allow-hosts", "127.0.0.1", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - t0
    import duckdb

    with duckdb.connect(str(work / "m.duckdb"), read_only=True) as con:
        posts, images, ok = con.execute("SELECT count(*), sum(len(images)), count(*) FILTER (image_status = 'ok') "
                                        "FROM scored_posts").fetchone()
        brand_rows = con.execute("SELECT count(*) FROM post_sentiment WHERE brand IS NOT NULL").fetchone()[0]
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, "posts": posts, "images": int(images), "ok_posts": ok, "brand_rows": brand_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--score-records", type=int, default=600)
    ap.add_argument("--score-runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_readers")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "readers.md")
    args = ap.parse_args()

    from imageserver import ImageServer, encode, textured_image

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    www = work / "www"
    (www / "img").mkdir(parents=True)
    for k in range(50):
        (www / "img" / f"{k}.jpg").write_bytes(encode(textured_image(640, 480, seed=k), "JPEG", quality=85))
    reads: dict[int, list[dict]] = {n: [] for n in args.sizes}
    with ImageServer(www) as server:
        base = server.url("img")
        dumps = {}
        for n in args.sizes:
            t0 = time.perf_counter()
            dumps[n] = write_dump(work / f"dump{n}", n, base)
            size = sum(p.stat().st_size for p in dumps[n].glob("*.zst"))
            print(f"wrote {n} records ({size / 2**20:.1f} MiB of zst) in {time.perf_counter() - t0:.1f} s", flush=True)
        for run in range(args.runs):
            for n in args.sizes:
                r = read_once(dumps[n], work / "read")
                reads[n].append(r)
                print(f"read run {run}: {n} records: {r['seconds']:.2f} s, {n / r['seconds']:.0f} records/s, "
                      f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
        scoring = []
        score_dump = write_dump(work / "score_dump", args.score_records, base, seed=1)
        for run in range(args.score_runs):
            s = score_once(score_dump, work / "score")
            scoring.append(s)
            print(f"score run {run}: {s['posts']} posts, {s['images']} images in {s['seconds']:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    write_report(args, reads, scoring)


def write_report(args, reads: dict[int, list[dict]], scoring: list[dict]) -> None:
    import pyarrow
    import zstandard

    load = os.getloadavg()
    lines = [
        "# Reading Reddit dumps: throughput and memory of the source stage, and the scoring rate",
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), shared with other work (load average {load[0]:.1f} / {load[1]:.1f} "
        f"at the end); Python {platform.python_version()}, pyarrow {pyarrow.__version__}, zstandard {zstandard.__version__}. "
        "Generated by `benchmarks/bench_readers.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "**What**: `mmsa score 'dir/*.jsonl.zst' --source-format reddit --brands brands.yaml` over synthetic Reddit "
        "submissions (Arctic Shift's fields, about 1 KB of JSON each): a third are galleries of 2-6 pictures, a quarter "
        "i.redd.it links with their preview, a tenth are comments (posts of their own), a third of the titles mention one of 5 brands "
        "(keywords, hashtags, handles, a regex). 8 zstd files per dump.",
        "",
        "**Method**: reading = `mmsa.pipeline.prepare`, the first stage of `mmsa score` (glob resolved, every record "
        "decompressed, read, validated, tagged, shard files written), alone in a fresh Python process per run, the sizes' "
        "runs interleaved; records/s = input records / the stage's wall seconds; peak memory = the "
        "process's peak RSS (ru_maxrss), interpreter and imports included. Scoring 100k posts on these 2 shared cores would "
        f"take well over an hour, so the scoring rate is measured on whole `mmsa score` runs over {args.score_records} "
        "records whose pictures come from a server on 127.0.0.1 (fresh output, database and image cache each run; "
        "wall clock of the command, Prefect and model start included). Medians over the runs.",
        "",
        "## Reading + tagging",
        "",
        "| records | posts | not posts (skipped) | shard files | seconds per run | median records/s | peak RSS per run (MB) | median peak RSS (MB) |",
        "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    medians = {}
    for n, runs in reads.items():
        rate = statistics.median(n / r["seconds"] for r in runs)
        peak = statistics.median(r["peak_rss_mb"] for r in runs)
        medians[n] = peak
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in runs)
        lines.append(f"| {n:,} | {runs[0]['posts']:,} | {sum(runs[0]['not_posts'].values()):,} | {runs[0]['shards']} "
                     f"| {seconds} | **{rate:,.0f}** | {peaks} | {peak:.0f} |")
    sizes = sorted(medians)
    if len(sizes) > 1:
        ratio = medians[sizes[-1]] / medians[sizes[0]]
        lines += ["", f"**Peak memory at {sizes[-1]:,} records is {ratio:.2f}x that at {sizes[0]:,}** (target: within 1.2x)."]
    lines += [
        "",
        "## Scoring (whole `mmsa score` runs)",
        "",
        "| posts | images | posts with a usable image | brand rows | seconds per run | median posts/s | median images/s |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    if scoring:
        s0 = scoring[0]
        seconds = statistics.median(s["seconds"] for s in scoring)
        each = ", ".join(f"{s['seconds']:.1f}" for s in scoring)
        lines.append(f"| {s0['posts']} | {s0['images']} | {s0['ok_posts']} | {s0['brand_rows']} | {each} "
                     f"| **{s0['posts'] / seconds:.1f}** | {s0['images'] / seconds:.1f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
