"""Benchmark `mmsa fetch` against img2dataset on the same local URLs and the same cores.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_fetch.py [--images 2000] [--runs 3] [--out benchmarks/results/fetch.md]

1. Generates N real-looking JPEGs once (800-1600 px, gradients, stripes and noise) in WORKDIR.
2. Serves them from a threaded HTTP server on 127.0.0.1 (tests/imageserver.py, in this process;
   the tools run as subprocesses, so the server has this process's GIL to itself).
3. Installs img2dataset into its own venv (I2D_VENV) unless it is there.
4. Tunes each tool briefly (workers for mmsa; processes, threads and output format for
   img2dataset) on a subset, then times the best setting of each on all images, end to end (the command's wall clock),
   alternating the tools, fresh output folders every run; reports medians.
5. Measures decode + resize alone: 1 thread, 2 threads, 2 processes, and JPEG draft mode on/off; and the image
   cache's check on read (ImageCache.load: read the file, SHA-256 against its key) beside them.
   `--decode-only` runs this part alone and prints it.

Writes a markdown report to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from imageserver import ImageServer, textured_image  # noqa: E402
from mmsa.images import decode  # noqa: E402
from mmsa.images.cache import ImageCache  # noqa: E402

MMSA = REPO / ".venv" / "bin" / "mmsa"


def make_one(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    width = int(rng.integers(800, 1601))
    height = int(width * rng.uniform(0.6, 1.4))
    textured_image(width, height, seed).save(path, "JPEG", quality=int(rng.integers(80, 95)))


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:05d}.jpg" for i in range(n)]
    missing = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"generating {len(missing)} JPEGs in {folder} ...", flush=True)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(make_one, missing, chunksize=8))
    return paths


def ensure_img2dataset(venv: Path) -> Path:
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def run_mmsa(dump: Path, work: Path, workers: int) -> tuple[float, int]:
    cache = work / "mmsa-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [str(MMSA), "fetch", str(dump), "--cache", str(cache), "--allow-hosts", "127.0.0.1", "--quiet",
           "--workers", str(workers), "--per-host", str(workers)]
    seconds = timed(cmd)
    statuses = pq.read_table(cache / "status" / f"{dump.stem}.parquet")["status"].to_pylist()
    return seconds, statuses.count("ok")


def mmsa_command(workers: int) -> str:
    return f"mmsa fetch posts.jsonl --cache DIR --allow-hosts 127.0.0.1 --quiet --workers {workers} --per-host {workers}"


def run_i2d(exe: Path, urls: Path, work: Path, setting: dict) -> tuple[float, int]:
    out = work / "i2d-out"
    shutil.rmtree(out, ignore_errors=True)
    seconds = timed([str(exe), *i2d_args(urls, out, setting)])
    successes = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return seconds, successes


def i2d_args(urls: Path, out: Path, setting: dict) -> list[str]:
    return [
        "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
        "--image_size", "224", "--resize_mode", "center_crop", "--retries", "0", "--timeout", "10",
        "--extract_exif", "False", "--enable_wandb", "False",
        "--processes_count", str(setting["processes"]), "--thread_count", str(setting["threads"]),
        "--output_format", setting["format"], "--number_sample_per_shard", str(setting["per_shard"]),
    ]


CHECK = "1 thread, cache check on read (file read + SHA-256)"


def decode_benchmark(paths: list[Path], passes: int = 5) -> list[tuple[str, float]]:
    """Images/s of decode + preprocess alone, from bytes in memory, and of the cache's check on read (files in
    the page cache, as a warm cache's are): median of interleaved passes."""
    blobs = [p.read_bytes() for p in paths]
    cache = ImageCache(tempfile.mkdtemp(prefix="mmsa-bench-cache-"))
    keys = [hashlib.sha256(b).hexdigest() for b in blobs]
    for key, blob in zip(keys, blobs):
        cache.store(key, blob)
    with ThreadPoolExecutor(2) as threads, ProcessPoolExecutor(2) as processes:
        list(processes.map(preprocess, blobs[:4]))  # start the workers before timing
        variants = {
            CHECK: lambda: [cache.load(key) for key in keys],
            "1 thread, draft mode": lambda: [preprocess(b) for b in blobs],
            "1 thread, full decode (no draft)": lambda: [full_decode(b) for b in blobs],
            "2 threads, draft mode": lambda: list(threads.map(preprocess, blobs)),
            "2 processes, draft mode": lambda: list(processes.map(preprocess, blobs, chunksize=4)),
        }
        rates: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(passes):  # interleaved, so that changes in machine load hit every variant alike
            for label, run in variants.items():
                started = time.perf_counter()
                run()
                rates[label].append(len(blobs) / (time.perf_counter() - started))
    shutil.rmtree(cache.root.parent)
    return [(label, statistics.median(values)) for label, values in rates.items()]


def preprocess(blob: bytes) -> np.ndarray:
    return decode.preprocess(blob, 224, 50_000_000)


def full_decode(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC, box=box))


def check_sentence(rates: dict[str, float]) -> str:
    """The cache check's cost per image against a draft-mode decode's, both on one thread."""
    share = rates["1 thread, draft mode"] / rates[CHECK]
    return (f"The cache's check on read costs {1000 / rates[CHECK]:.2f} ms per image, {100 * share:.1f}% of a "
            "draft-mode decode + resize of the same image.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tune-images", type=int, default=400, help="posts used for the tuning runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsa-bench"))
    parser.add_argument("--i2d-venv", type=Path, default=Path("/tmp/i2d-venv"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fetch.md")
    parser.add_argument("--decode-only", action="store_true",
                        help="only decode + resize and the cache check (200 images, --runs passes), printed; no report")
    args = parser.parse_args()

    work = args.workdir
    paths = make_images(work / "images", args.images)
    if args.decode_only:
        rows = decode_benchmark(paths[:200], passes=args.runs)
        print("\n".join(f"| {label} | {rate:.0f} |" for label, rate in rows))
        print(check_sentence(dict(rows)))
        return
    exe = ensure_img2dataset(args.i2d_venv)
    mean_kb = statistics.mean(p.stat().st_size for p in paths) / 1024
    with ImageServer(work / "images") as server:
        urls = [server.url(p.name) for p in paths]
        dump = work / "posts.jsonl"
        dump.write_text("".join(
            json.dumps({"post_id": str(i), "created_at": "2026-01-01T00:00:00Z", "image_url": u}) + "\n"
            for i, u in enumerate(urls)
        ))
        url_list = work / "urls.txt"
        url_list.write_text("\n".join(urls) + "\n")
        # Tuning runs use the first --tune-images posts only, to keep the benchmark short.
        tune = min(args.tune_images, args.images)
        tune_dump, tune_list = work / "tune.jsonl", work / "tune.txt"
        tune_dump.write_text("".join(dump.read_text().splitlines(keepends=True)[:tune]))
        tune_list.write_text("\n".join(urls[:tune]) + "\n")

        per_shard = max(50, args.images // 8)
        i2d_settings = [
            {"processes": p, "threads": t, "format": f, "per_shard": min(per_shard, tune // p)}
            for p, t, f in [(1, 32, "files"), (2, 16, "files"), (2, 64, "files"), (2, 16, "webdataset"), (4, 32, "webdataset")]
        ]
        tuning = []
        for workers in (8, 16, 32):
            seconds, ok = run_mmsa(tune_dump, work, workers)
            tuning.append(("mmsa fetch", f"workers={workers}", tune / seconds, ok))
            print(tuning[-1], flush=True)
        for setting in i2d_settings:
            seconds, ok = run_i2d(exe, tune_list, work, setting)
            tuning.append(("img2dataset", json.dumps(setting), tune / seconds, ok))
            print(tuning[-1], flush=True)
        best_workers = int(max((t for t in tuning if t[0] == "mmsa fetch"), key=lambda t: t[2])[1].split("=")[1])
        best_i2d = json.loads(max((t for t in tuning if t[0] == "img2dataset"), key=lambda t: t[2])[1])
        best_i2d["per_shard"] = per_shard

        mmsa_runs, i2d_runs = [], []
        load_before = os.getloadavg()[1]
        for _ in range(args.runs):
            mmsa_runs.append(run_mmsa(dump, work, best_workers))
            i2d_runs.append(run_i2d(exe, url_list, work, best_i2d))
            print(mmsa_runs[-1], i2d_runs[-1], flush=True)

        load = (load_before, os.getloadavg()[1])
    decode_rows = decode_benchmark(paths[:200])
    write_report(args, mean_kb, tuning, best_workers, best_i2d, mmsa_runs, i2d_runs, decode_rows, load)


def write_report(args, mean_kb, tuning, best_workers, best_i2d, mmsa_runs, i2d_runs, decode_rows, load) -> None:
    n = args.images
    mmsa_rates = [n / s for s, _ in mmsa_runs]
    i2d_rates = [n / s for s, _ in i2d_runs]
    mmsa_median, i2d_median = statistics.median(mmsa_rates), statistics.median(i2d_rates)
    i2d_version = subprocess.run(
        [str(args.i2d_venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
        capture_output=True, text=True,
    ).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    fmt = lambda rates: ", ".join(f"{r:.0f}" for r in rates)  # noqa: E731
    decode = dict(decode_rows)
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    lines = [
        "# Image fetch benchmark: `mmsa fetch` vs img2dataset",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, Pillow {PIL.__version__}, "
        f"img2dataset {i2d_version}. Generated by `benchmarks/bench_fetch.py --images {n} --runs {args.runs}`.",
        "",
        f"Workload: {n} JPEGs, 800-1600 px wide (aspect 0.6-1.4), textures + noise, mean {mean_kb:.0f} KB, "
        "served from a threaded HTTP/1.1 server on 127.0.0.1 on the same cores. Both tools download every "
        "image, decode it, resize to 224 (img2dataset: centre crop; mmsa: squash, the same one resize), hash it (SHA-256) and store it "
        "(mmsa: the downloaded bytes + URL index + Parquet status table; img2dataset: re-encoded JPEGs + its "
        "metadata). Time = wall clock of the whole command, Python start-up included, fresh output each run; "
        "the tools alternate run by run.",
        "",
        f"The machine was shared with other work: 5-minute load average {load[0]:.1f} before the timed runs and "
        f"{load[1]:.1f} after them (on {os.cpu_count()} cores), so absolute rates are low and noisy; both tools "
        "ran under the same conditions.",
        "",
        "| tool | setting | images/s per run | median images/s | ok |",
        "| --- | --- | --- | --- | --- |",
        f"| mmsa fetch | workers={best_workers}, per-host={best_workers} | {fmt(mmsa_rates)} | **{mmsa_median:.0f}** | "
        f"{mmsa_runs[-1][1]}/{n} |",
        f"| img2dataset | {best_i2d['processes']} processes x {best_i2d['threads']} threads, {best_i2d['format']}, "
        f"{best_i2d['per_shard']}/shard | {fmt(i2d_rates)} | **{i2d_median:.0f}** | {i2d_runs[-1][1]}/{n} |",
        "",
        f"**Ratio: mmsa fetch is {mmsa_median / i2d_median:.2f}x img2dataset** (median over median; target >= 2x).",
        "",
        "Commands (best settings):",
        "",
        "```sh",
        mmsa_command(best_workers),
        "img2dataset " + " ".join(i2d_args(Path("urls.txt"), Path("OUT"), best_i2d)),
        "```",
        "",
        f"## Tuning runs (one run each on the first {min(args.tune_images, n)} images; the best setting of each "
        "tool was then timed above)",
        "",
        "| tool | setting | images/s | ok |",
        "| --- | --- | --- | --- |",
        *[f"| {tool} | `{setting}` | {rate:.0f} | {ok} |" for tool, setting, rate, ok in tuning],
        "",
        f"## Decode + resize alone (200 of the images, bytes in memory, median of 5 interleaved passes; "
        f"load average {os.getloadavg()[0]:.1f})",
        "",
        "| how | images/s |",
        "| --- | --- |",
        *[f"| {label} | {rate:.0f} |" for label, rate in decode_rows],
        "",
        f"2 processes decoded at {decode['2 processes, draft mode'] / decode['2 threads, draft mode']:.2f}x the rate "
        "of 2 threads"
        + (" (with the cores busy with other work, as here, this comparison is noisy)" if busy else "")
        + ". mmsa decodes in its download threads: Pillow releases the GIL while decoding and "
        "resizing, so threads can use every core, without pickling image bytes to worker processes or "
        "starting them. Draft mode (JPEG DCT scaling to the smallest size >= 224 on the shorter side) made "
        f"one thread {decode['1 thread, draft mode'] / decode['1 thread, full decode (no draft)']:.1f}x faster "
        "than a full decode. " + check_sentence(decode),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
