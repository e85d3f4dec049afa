"""Benchmark the inference engine (mmsa.infer): model-only throughput against the CPU's matmul
roofline, end-to-end `mmsa score` against its slowest stage alone, and peak memory.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_infer.py [--posts 128] [--runs 3] [--e2e-posts 1000] \
        [--rss-posts 1000 10000] [--parts abc] [--out benchmarks/results/infer.md]

(a) Model only, on MVSA-Single dev posts (text + image, images decoded beforehand): posts/s per
    backend at batch 1/8/32/128; FLOPs per post counted with FlopCounterMode on one batch of 32
    at the dev set's median token length; fp32 matmul GFLOP/s (2048x2048, median) measured in the
    same process; roofline ratio = posts/s x FLOPs/post / matmul FLOP/s. Also the time per part
    (tokenize+batching, text encoder, image encoder) and dev-set accuracy / label agreement per
    backend, and torch.compile in a subprocess with a time budget.
(b) End to end: a generated dump (224-480 px JPEGs served from 127.0.0.1), `mmsa score` as a
    subprocess per backend ($MMSA_BACKEND; fresh output and image cache every run, PREFECT_HOME
    under --workdir, deleted at the end); next to `mmsa fetch` alone and the model alone on the same
    posts, and the start-up cost of an almost empty run. Each `mmsa score` run also follows a
    model-alone pass of its own, and the ratio of each such pair is reported too, split by the CPU
    seconds of each side (the run's, its API server's and the image server's) into the model's share
    of the work and how busy the run kept the cores. With --e2e-server, also `mmsa score` against a
    running `prefect server start` (as deployments run), in place of the API server each run starts.
(c) Peak RSS (/usr/bin/time -v) of `mmsa score` on text-only dumps of the given sizes.

With --device cuda, (a) times the torch backend on the GPU under the engine's autocast at batch
1..512 (plus fp32 at 128) against the GPU's measured bf16 matmul rate, with NVML utilisation,
labels against the fp32 CPU engine and a real out-of-memory back-off; (b) runs the model alone on
the GPU and `mmsa score` with the torch backend (the device is picked automatically).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmsa.data import load_image, load_jsonl, resolve_data_dir  # noqa: E402
from mmsa.infer import BACKENDS, Engine, _ImageCore, _TextCore, cpu_threads  # noqa: E402
from mmsa.model import load_model  # noqa: E402
from mmsa.pipeline import DEFAULT_SHARD_SIZE as SHARD  # noqa: E402  (the model alone is called as the flow calls it)

PY = sys.executable
BATCHES = (1, 8, 32, 128)
CUDA_BATCHES = (1, 8, 32, 128, 512)


def load_avg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def median_time(fn, runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


class GpuSampler:
    """GPU utilisation over a window, polled from NVML every 50 ms (all processes on the GPU, so a
    `mmsa score` subprocess counts): mean of NVML's "share of the last sample period in which a kernel
    ran", and the peak of the memory in use. A no-op without a GPU or NVML."""

    def __init__(self):
        self.samples, self.mem, self._stop = [], [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML here: CPU-only machine
            self._nvml = None

    def _poll(self):
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self.mem.append(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def __enter__(self):
        if self._nvml:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._nvml:
            self._stop.set()
            self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        return f"{statistics.mean(self.samples):.0f}% (peak mem {max(self.mem):.0f} MiB)"


def matmul_gflops(n: int = 2048, runs: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    med, _ = median_time(lambda: a @ b, runs)
    return 2 * n**3 / med / 1e9


def count_flops(model, texts: list[str], images: list[np.ndarray]) -> dict[str, float]:
    """FLOPs per post of each part, on one batch at the dev set's median token length."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmsa.heads import Feats

    te, ie = model.text_encoder, model.image_encoder
    lengths = [len(x) for x in te.tokenizer(texts, truncation=True, max_length=te.max_length)["input_ids"]]
    width = int(np.median(lengths))
    tok = te.tokenizer(texts, truncation=True, max_length=width, padding="max_length", return_tensors="pt")
    pixels = torch.from_numpy(np.stack(images))
    out = {"median_tokens": width}
    with torch.inference_mode():
        for name, fn in (
            ("text", lambda: _TextCore(te)(tok["input_ids"], tok["attention_mask"])),
            ("image", lambda: _ImageCore(ie)(pixels)),
        ):
            with FlopCounterMode(display=False) as fc:
                res = fn()
            out[name] = fc.get_total_flops() / len(texts)
            if name == "text":
                t_hidden, t_pooled = res
            else:
                i_hidden, i_pooled = res
        feats = Feats(t_pooled, i_pooled, t_hidden, tok["attention_mask"].bool(), i_hidden, torch.ones(i_hidden.shape[:2], dtype=torch.bool))
        with FlopCounterMode(display=False) as fc:
            model.bundle(feats, torch.ones(len(texts), dtype=torch.bool))
        out["head"] = fc.get_total_flops() / len(texts)
    out["total"] = out["text"] + out["image"] + out["head"]
    return out


def part_times(engine: Engine, texts, images, runs: int, batch_size: int = 32) -> dict[str, float]:
    """Seconds per post of batching (tokenize, pad, stack, copy to the device), text encoder, image
    encoder, under the engine's autocast, waiting for the device after each part. With ONNX Runtime on
    CPU that is one stream's time: one core's (mmsa.infer.Engine.streams)."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)

    def timed(fn):
        return median_time(lambda: (fn(), sync()), runs)[0]

    batches = list(engine.batches(texts, images, batch_size))
    out = {"batching": timed(lambda: list(engine.batches(texts, images, batch_size)))}
    with torch.inference_mode(), torch.autocast(engine.device.type, dtype=engine.autocast, enabled=engine.autocast is not None):
        out["text"] = timed(lambda: [engine.text_core(b.input_ids, b.attention_mask) for b in batches])
        out["image"] = timed(lambda: [engine.image_core(b.pixels) for b in batches if b.pixels is not None])
    return {k: v / len(texts) for k, v in out.items()}


def compile_child(n_posts: int, runs: int) -> None:
    """In a subprocess (the parent enforces a time budget): torch.compile both encoders, report."""
    model = load_model("default")
    texts, images = dev_posts(model, n_posts)
    engine = Engine(model, wrap_cores=lambda text, image: (torch.compile(text, dynamic=True), torch.compile(image, dynamic=True)))
    t0 = time.perf_counter()
    engine.predict(texts, images)
    first = time.perf_counter() - t0
    med, _ = median_time(lambda: engine.predict(texts, images), runs)
    print(json.dumps({"first_call_s": first, "posts_per_s": n_posts / med}))


def dev_posts(model, n: int | None = None):
    ds = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl")
    n = n or len(ds)
    return ds.texts[:n], [load_image(p, model.image_size) if p else None for p in ds.images[:n]]


def part_a(args, lines: list[str]) -> None:
    model = load_model("default")
    ds = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl")
    all_texts, all_images = dev_posts(model)
    texts, images = all_texts[: args.posts], all_images[: args.posts]
    threads = cpu_threads()
    torch.set_num_threads(threads)
    lines += ["## (a) Model only, CPU", "",
              f"Posts: the first {args.posts} MVSA-Single dev posts (all with an image), images decoded and resized "
              f"beforehand; {threads} threads (os.sched_getaffinity); median of {args.runs} runs after a warm-up.", ""]
    flops = count_flops(model, all_texts[:32], all_images[:32])
    gflops = matmul_gflops()
    lines += [f"FLOPs per post (FlopCounterMode, batch 32, text at the dev median of {flops['median_tokens']} tokens): "
              f"text {flops['text'] / 1e9:.3f} G, image {flops['image'] / 1e9:.3f} G, head {flops['head'] / 1e6:.2f} M, "
              f"**total {flops['total'] / 1e9:.3f} GFLOP**.",
              f"fp32 matmul 2048x2048 (torch, {threads} threads, median of 10): **{gflops:.1f} GFLOP/s** "
              f"-> roofline {gflops * 1e9 / flops['total']:.1f} posts/s. Load average before: {load_avg()}.", "",
              "| backend | batch | posts/s (median) | runs posts/s | % of matmul roofline | load avg (1/5/15) |",
              "| --- | ---: | ---: | --- | ---: | --- |"]
    print("\n".join(lines), flush=True)
    engines, parts = {}, {}
    for backend in args.backends:
        t0 = time.perf_counter()
        engines[backend] = (Engine(model, backend=backend, cache_dir=args.workdir / "cache"), time.perf_counter() - t0)
        engines[backend][0].predict(texts[:8], images[:8])
    for bs in BATCHES:  # backends interleaved per batch size: load drifts on a shared machine
        for backend, (engine, _) in engines.items():
            med, times = median_time(lambda: engine.predict(texts, images, batch_size=bs), args.runs)
            rate = len(texts) / med
            lines.append(f"| {backend} | {bs} | **{rate:.1f}** | {', '.join(f'{len(texts) / t:.1f}' for t in times)} "
                         f"| {100 * rate * flops['total'] / (gflops * 1e9):.0f}% | {load_avg()} |")
            print(lines[-1], flush=True)
    for backend, (engine, _) in engines.items():
        parts[backend] = part_times(engine, texts, images, args.runs)
    lines += ["", "Time per post by part at batch 32 (median), and the FLOP rate each part reaches:", "",
              "| backend | batching ms | text ms | text GFLOP/s | image ms | image GFLOP/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for backend, p in parts.items():
        lines.append(f"| {backend} | {1e3 * p['batching']:.2f} | {1e3 * p['text']:.2f} | {flops['text'] / p['text'] / 1e9:.1f} "
                     f"| {1e3 * p['image']:.2f} | {flops['image'] / p['image'] / 1e9:.1f} |")
    print("\n".join(lines[-len(parts) - 4 :]), flush=True)
    lines += ["", f"Accuracy on the whole dev set ({len(ds)} rows), batch 32; agreement = share of labels equal to the "
              "torch fp32 engine's; max |dp| = largest probability difference from it:", "",
              "| backend | build s | accuracy | label agreement | max abs prob diff |", "| --- | ---: | ---: | ---: | ---: |"]
    ref = None
    for backend, (engine, build) in engines.items():
        pred = engine.predict(all_texts, all_images)
        ref = pred if ref is None else ref
        acc = (pred.probs.argmax(1) == ds.labels).mean()
        agree = (pred.probs.argmax(1) == ref.probs.argmax(1)).mean()
        lines.append(f"| {backend} | {build:.1f} | {100 * acc:.2f}% | {100 * agree:.1f}% | {np.abs(pred.probs - ref.probs).max():.2e} |")
        print(lines[-1], flush=True)
    lines += ["", f"torch.compile (inductor, dynamic shapes, both encoders; subprocess, {args.compile_budget} s budget, "
              f"load before: {load_avg()}): "]
    try:
        proc = subprocess.run([PY, __file__, "--compile-child", "--posts", str(args.posts), "--runs", str(args.runs)],
                              capture_output=True, text=True, timeout=args.compile_budget)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        lines[-1] += f"first call (compiling) {res['first_call_s']:.0f} s, then **{res['posts_per_s']:.1f} posts/s** at batch 32."
    except subprocess.TimeoutExpired:
        lines[-1] += f"did not finish compiling and scoring {args.posts} posts within {args.compile_budget} s."
    except (json.JSONDecodeError, IndexError):
        lines[-1] += f"failed: {proc.stderr.strip().splitlines()[-1:]}"
    lines.append("")
    print(lines[-2], flush=True)


def cuda_matmul_tflops(n: int = 8192, runs: int = 10) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    med, _ = median_time(lambda: (a @ b, torch.cuda.synchronize()), runs)
    return 2 * n**3 / med / 1e12


def part_a_cuda(args, lines: list[str]) -> None:
    """(a) on the GPU: the torch backend under the engine's autocast at batch 1..512 and under fp16 and
    no autocast (fp32) at 128/512, GPU utilisation, labels of each against the fp32 CPU engine, and a
    real out-of-memory back-off."""
    model = load_model("default")
    ds = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl")
    all_texts, all_images = dev_posts(model)
    reps = -(-args.posts // len(all_texts))
    texts, images = (all_texts * reps)[: args.posts], (all_images * reps)[: args.posts]
    flops = count_flops(model, all_texts[:32], all_images[:32])
    tflops = cuda_matmul_tflops()
    engine = Engine(model, device="cuda", backend="torch")
    lines += [f"## (a) Model only, GPU ({torch.cuda.get_device_name()})", "",
              f"Posts: the {len(all_texts)} MVSA-Single dev posts repeated to {args.posts} (images decoded and resized "
              f"beforehand, so this is the engine alone: tokenising, batching, copies to the GPU, both encoders, the head "
              f"and the copy back); backend torch, autocast {engine.autocast}; median of {args.runs} runs after a warm-up. "
              f"GPU utilisation: mean of NVML samples every 50 ms during the timed runs.", "",
              f"FLOPs per post: **{flops['total'] / 1e9:.3f} GFLOP** (as on the CPU). bf16 matmul 8192^3 on this GPU "
              f"(median of 10): **{tflops:.0f} TFLOP/s** -> roofline {tflops * 1e12 / flops['total']:,.0f} posts/s.", "",
              "| precision | batch | posts/s (median) | runs posts/s | % of bf16 roofline | GPU utilisation |",
              "| --- | ---: | ---: | --- | ---: | --- |"]
    print("\n".join(lines), flush=True)
    engine.predict(texts[:512], images[:512], batch_size=128)
    others = {}  # the same engine under another autocast dtype, or none (fp32): what each precision buys
    for name, dtype in (("float16", torch.float16), ("fp32", None)):
        others[name] = Engine(model, device="cuda", backend="torch")
        others[name].autocast = dtype
        others[name].predict(texts[:256], images[:256])
    default_name = str(engine.autocast).replace("torch.", "")
    runs = [(default_name, engine, CUDA_BATCHES)] + [(name, eng, (128, 512)) for name, eng in others.items()]
    for name, eng, batches in runs:
        for bs in batches:
            with GpuSampler() as gpu:
                med, times = median_time(lambda: eng.predict(texts, images, batch_size=bs), args.runs)
            rate = len(texts) / med
            lines.append(f"| {name} | {bs} | **{rate:,.0f}** | {', '.join(f'{len(texts) / t:,.0f}' for t in times)} "
                         f"| {100 * rate * flops['total'] / (tflops * 1e12):.2f}% | {gpu.summary()} |")
            print(lines[-1], flush=True)
    lines += ["", "Time per post by part (median; each part waits for the GPU before the clock stops):", "",
              "| batch | batching + copy ms | text ms | image ms |", "| ---: | ---: | ---: | ---: |"]
    for bs in (32, 128, 512):
        p = part_times(engine, texts, images, args.runs, batch_size=bs)
        lines.append(f"| {bs} | {1e3 * p['batching']:.3f} | {1e3 * p['text']:.3f} | {1e3 * p['image']:.3f} |")
    print("\n".join(lines[-5:]), flush=True)
    ref = Engine(model, device="cpu", backend="torch").predict(all_texts, all_images)
    lines += ["", f"Labels on the whole dev set ({len(ds)} rows) against the fp32 CPU engine (torch backend):", "",
              "| engine | batch | accuracy | label agreement | max abs prob diff |", "| --- | ---: | ---: | ---: | ---: |",
              f"| cpu fp32 (reference) | 32 | {100 * (ref.probs.argmax(1) == ds.labels).mean():.2f}% | 100.0% | 0 |"]
    for name, eng in ((default_name, engine), *others.items()):
        pred = eng.predict(all_texts, all_images)
        lines.append(f"| cuda {name} | {eng.batch_size} | {100 * (pred.probs.argmax(1) == ds.labels).mean():.2f}% "
                     f"| {100 * (pred.probs.argmax(1) == ref.probs.argmax(1)).mean():.1f}% | {np.abs(pred.probs - ref.probs).max():.2e} |")
    print("\n".join(lines[-4:]), flush=True)
    # A real CUDA out-of-memory: cap this process's share of GPU memory just above what is in use, then
    # ask for one batch of everything; the engine must halve until it fits and lose no post.
    want = engine.predict(texts, images, batch_size=128)
    oom = Engine(model, device="cuda", backend="torch", batch_size=len(texts))
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + 1.2 * 2**30) / total)
    t0 = time.perf_counter()
    got = oom.predict(texts, images)
    oom_s = time.perf_counter() - t0
    torch.cuda.set_per_process_memory_fraction(1.0)
    lines += ["", f"Out-of-memory back-off on the GPU: with this process capped at its allocated memory + 1.2 GiB, one "
              f"batch of {len(texts)} posts ran out of memory and the engine settled at batch **{oom.batch_size}** "
              f"({oom_s:.1f} s for the {len(texts)} posts, back-off included); "
              f"labels equal to the batch-128 run on {100 * (got.probs.argmax(1) == want.probs.argmax(1)).mean():.1f}% of "
              f"the {len(texts)} posts (max abs prob diff {np.abs(got.probs - want.probs).max():.1e}).", ""]
    print("\n".join(lines[-2:]), flush=True)


def make_dump(folder: Path, base_url: str, n: int, with_images: bool, texts: list[str], seed: int = 11) -> Path:
    """n posts over 4 days; texts cycled from the dev set (realistic lengths); JPEGs 224-480 px."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 16, tzinfo=timezone.utc)
    rows = []
    for i in range(n):
        row = {"post_id": f"p{i:06d}", "created_at": (start + timedelta(seconds=345600 * i // n)).isoformat(),
               "brand": ("acme", "globex", "initech")[i % 3], "text": texts[i % len(texts)]}
        if with_images:
            name = f"img{i:06d}.jpg"
            path = folder / "images" / name
            if not path.exists():
                w, h = rng.randint(224, 480), rng.randint(224, 480)
                base = np.array([rng.randrange(256) for _ in range(3)])
                noise = np.random.default_rng(i).integers(-50, 50, size=(h, w, 3))
                grad = np.linspace(0.6, 1.3, w)[None, :, None]
                from PIL import Image

                Image.fromarray(np.clip(base * grad + noise, 0, 255).astype(np.uint8)).save(path, quality=85)
            row["image_url"] = f"{base_url}/images/{name}"
        rows.append(row)
    dump = folder / f"posts-{n}-{'img' if with_images else 'txt'}.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dump


def score_cmd(url: str, out: Path, switch_interval: float | None = None, dask_workers: int | None = None) -> list[str]:
    """`mmsa score` as a subprocess; with switch_interval, under that sys.setswitchinterval; with
    dask_workers, shards scored by that many worker processes of a local Dask cluster."""
    args = ["score", url, "--db", str(out / "db.duckdb"), "--out", str(out / "parquet"), "--allow-hosts", "127.0.0.1",
            "--quiet", "--force"]
    if dask_workers:
        args += ["--runner", "dask", "--dask-workers", str(dask_workers)]
    if switch_interval is None:
        return [PY, "-m", "mmsa.cli", *args]
    return [PY, "-c", f"import sys; sys.setswitchinterval({switch_interval}); from mmsa.cli import entry; entry()", *args]


@contextlib.contextmanager
def prefect_server(env: dict):
    """`prefect server start` with a PREFECT_HOME of its own, as deployments run (docs/operations.md); yields `env`
    with its PREFECT_API_URL. It runs on the same cores as the runs, its services included."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="mmsa-bench-server-")
    proc = subprocess.Popen([str(Path(PY).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=dict(env, PREFECT_HOME=home, PREFECT_UI_ENABLED="0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("`prefect server start` did not come up")
                time.sleep(1)
        yield dict(env, PREFECT_API_URL=url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


class Timed(NamedTuple):
    wall: float  # seconds
    rss: int  # peak, KiB
    cpu: float  # user + system seconds of the command, its waited-for children included (its API server)
    host_cpu: float  # CPU seconds of this process meanwhile: the image server's threads


def run_timed(cmd: list[str], env: dict) -> Timed:
    """Wall, peak RSS and CPU of one command (/usr/bin/time -v), and what this process spent meanwhile."""
    c0, t0 = time.process_time(), time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=REPO)
    wall, host_cpu = time.perf_counter() - t0, time.process_time() - c0
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    stat = {k.strip(): v.strip() for k, _, v in (line.partition(": ") for line in proc.stderr.splitlines()) if k}
    cpu = float(stat["User time (seconds)"]) + float(stat["System time (seconds)"])
    return Timed(wall, int(stat["Maximum resident set size (kbytes)"]), cpu, host_cpu)


def cpu_budget(paired: dict[str, list[tuple[Timed, Timed]]]) -> list[str]:
    """Each pair's ratio (model alone's wall / the run's wall) split into two factors whose product it is:
    the model's share of all the CPU work the run caused (its own, its API server's, the image server's), and
    how busy the run kept the cores relative to the model alone. On a machine where every stage shares the
    same cores, the first factor caps the ratio however well the stages overlap."""
    cores = len(os.sched_getaffinity(0))
    out = ["", f"CPU budget of each pair ({cores} cores): ratio = model's share of the work x cores busy in the run / "
           "cores busy in the model alone.", "",
           "| variant | model alone: wall s, CPU s | mmsa score: wall s, CPU s (+ image server) | ratio "
           "| model's share of the work | cores busy: run / model alone |", "| --- | --- | --- | ---: | ---: | --- |"]
    for variant, pairs in paired.items():
        for alone, run in pairs:
            work = run.cpu + run.host_cpu
            busy_run, busy_alone = work / (cores * run.wall), alone.cpu / (cores * alone.wall)
            out.append(f"| {variant} | {alone.wall:.1f}, {alone.cpu:.1f} | {run.wall:.1f}, {run.cpu:.1f} (+{run.host_cpu:.1f}) "
                       f"| {100 * alone.wall / run.wall:.0f}% | {100 * alone.cpu / work:.0f}% | {100 * busy_run:.0f}% / {100 * busy_alone:.0f}% |")
    return out + [""]


def last_run_stages(db: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return json.loads(con.execute("SELECT stage_seconds FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    finally:
        con.close()


def part_bc(args, lines: list[str]) -> None:
    site = args.workdir / "site"
    dev_texts = load_jsonl(resolve_data_dir() / "mvsa_single" / "dev.jsonl").texts
    # Every run writes into a new folder under runs/, all deleted at the end, none between runs: deleting
    # a run's 10,000 cache files seconds before the next run made ext4's inode allocation in that run
    # slower (it skips recently freed inodes), a cost a nightly run with a kept cache does not have.
    runs = args.workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # left by an interrupted benchmark
    (runs / "prefect").mkdir(parents=True)
    env = dict(os.environ, PREFECT_HOME=str(runs / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HF_HUB_OFFLINE="1", MMSA_CACHE=str(args.workdir / "cache"))
    try:
        _part_bc(args, lines, site, env, dev_texts, runs)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _part_bc(args, lines: list[str], site: Path, env: dict, dev_texts: list[str], runs: Path) -> None:
    from mmsa.demo import serve_folder

    with serve_folder(site) as base:
        if "b" in args.parts:
            n = args.e2e_posts
            dump = make_dump(site, base, n, True, dev_texts)
            url = f"{base}/{dump.name}"
            tiny = make_dump(site, base, 4, False, dev_texts)
            lines += ["## (b) End to end", "",
                      f"Dump: {n} posts, each with a JPEG of 224-480 px a side (mean {np.mean([p.stat().st_size for p in (site / 'images').glob('*.jpg')]) / 1024:.0f} KiB) "
                      "served from 127.0.0.1 by a threaded keep-alive (HTTP/1.1) server in the benchmark process; texts cycled from the dev set. "
                      "Every run starts from a fresh output folder and image cache (so it downloads every image).", "",
                      "| what | command | wall s per run | median posts/s | CPU s per run (+ the image server's) "
                      "| peak RSS MiB (max) | load avg (1/5/15) | GPU utilisation |",
                      "| --- | --- | --- | ---: | --- | ---: | --- | --- |"]
            results = {}

            def record(name, cmd_text, runs_: list[Timed], gpu=None):
                rate = n / statistics.median(t.wall for t in runs_)
                results[name] = rate
                mib = f"{max(t.rss for t in runs_) / 1024:.0f}" if runs_[0].rss else "(in process)"
                cpu = ", ".join(f"{t.cpu:.1f}" + (f" (+{t.host_cpu:.1f})" if t.rss else "") for t in runs_)
                lines.append(f"| {name} | `{cmd_text}` | {', '.join(f'{t.wall:.1f}' for t in runs_)} | **{rate:.1f}** | {cpu} "
                             f"| {mib} | {load_avg()} | {gpu.summary() if gpu else 'n/a'} |")
                print(lines[-1], flush=True)

            fetches = [run_timed([PY, "-m", "mmsa.cli", "fetch", url, "--cache", str(runs / f"fetch-{r}"), "--allow-hosts",
                                  "127.0.0.1", "--quiet"], env) for r in range(args.e2e_runs)]
            record("fetch alone", "mmsa fetch DUMP --cache FRESH --allow-hosts 127.0.0.1", fetches)
            model = load_model("default")
            imgs = []
            for i in range(n):
                imgs.append(load_image(site / "images" / f"img{i:06d}.jpg", model.image_size))
            texts = [dev_texts[i % len(dev_texts)] for i in range(n)]
            engines = {}

            def model_alone(backend: str) -> Timed:
                """One pass of the model alone over the dump's posts: its wall and CPU seconds (in process)."""
                engine = engines[backend]
                with ThreadPoolExecutor(2) as shards:  # two callers, as the flow's shard tasks
                    c0, t0 = time.process_time(), time.perf_counter()
                    list(shards.map(lambda s: engine.predict(texts[s : s + SHARD], imgs[s : s + SHARD]), range(0, n, SHARD)))
                    return Timed(time.perf_counter() - t0, 0, time.process_time() - c0, 0.0)

            for backend in args.e2e_variants:
                engines[backend] = Engine(model, backend=backend, device=args.device, cache_dir=args.workdir / "cache")
                engines[backend].predict(texts[:256], imgs[:256])  # warm-up (CUDA context, kernels)
                with GpuSampler() as gpu:
                    alone = [model_alone(backend) for _ in range(args.e2e_runs)]
                record(f"model alone ({backend})", f"predict per {SHARD}-post shard from 2 threads, in process, batch "
                       f"{engines[backend].batch_size}", alone, gpu=gpu)

            def fixed_cost(tag: str, run_env: dict) -> tuple[float, float]:
                """A 4-post text-only run's wall and CPU seconds, medians of 2 after an untimed one: the first run in
                a fresh PREFECT_HOME also creates Prefect's database (about 10 s), and a server's first run registers
                the flow, which a scheduled nightly run never pays."""
                tiny_runs = [run_timed(score_cmd(f"{base}/{tiny.name}", runs / f"e2e-tiny-{tag}-{r}"), run_env) for r in range(3)][1:]
                return statistics.median(t.wall for t in tiny_runs), statistics.median(t.cpu for t in tiny_runs)

            startup = fixed_cost("own-server", dict(env, MMSA_BACKEND=args.e2e_variants[-1]))  # first: see fixed_cost
            stages = {}
            last = args.e2e_variants[-1]
            startups = {}
            variants = [(b, None, None, False, b) for b in args.e2e_variants] + [
                (last, si, None, False, f"{last}, switch interval {si * 1e3:g} ms") for si in args.e2e_switch] + [
                (last, None, w, False, f"{last}, {w} Dask worker processes") for w in args.e2e_dask_workers] + [
                (last, None, None, True, f"{last}, a running Prefect server")] * args.e2e_server
            # The host's speed drifts by several % within minutes, so each run of `mmsa score` is also paired with a
            # model-alone pass just before it: the ratio of each pair sees one state of the host.
            paired: dict[str, list[tuple[Timed, Timed]]] = {}
            for backend, switch, workers, server, variant in variants:
                paired[variant] = []
                with prefect_server(env) if server else contextlib.nullcontext(env) as run_env, GpuSampler() as gpu:
                    run_env = dict(run_env, MMSA_BACKEND=backend)
                    if server:
                        startups[variant] = fixed_cost("running-server", run_env)
                    for r in range(args.e2e_runs):
                        out = runs / f"e2e-{backend}-{switch}-{workers}-{server}-{r}"
                        alone = model_alone(backend)
                        paired[variant].append((alone, run_timed(score_cmd(url, out, switch, workers), run_env)))
                        stages[variant] = last_run_stages(out / "db.duckdb")
                record(f"mmsa score ({variant})", "mmsa score DUMP_URL --db FRESH --out FRESH --allow-hosts 127.0.0.1 --force",
                       [run for _, run in paired[variant]], gpu)
            lines += ["", f"Start-up + fixed cost of `mmsa score` ({args.e2e_variants[-1]}; a 4-post text-only dump, median of 2 after an untimed one): "
                      f"{startup[0]:.1f} s, {startup[1]:.1f} s of CPU" + "".join(f"; {v}: {t[0]:.1f} s, {t[1]:.1f} s of CPU"
                                                                     for v, t in startups.items()) + ".", "",
                      "| variant | e2e posts/s | slowest stage alone | ratio | ratio without the fixed cost "
                      "| ratio of paired runs (model alone just before each run): each, median | stage seconds reported by the run |",
                      "| --- | ---: | --- | ---: | ---: | --- | --- |"]
            for backend, _, _, _, variant in variants:
                slow_name = min(("fetch alone", f"model alone ({backend})"), key=lambda k: results[k])
                slow = results[slow_name]
                e2e = results[f"mmsa score ({variant})"]
                net = n / max(n / e2e - startups.get(variant, startup)[0], 1e-9)
                ratios = [alone.wall / run.wall for alone, run in paired[variant]]
                pairs = ", ".join(f"{100 * q:.0f}%" for q in ratios)
                lines.append(f"| {variant} | {e2e:.1f} | {slow_name}: {slow:.1f} | {100 * e2e / slow:.0f}% | {100 * net / slow:.0f}% "
                             f"| {pairs}; **{100 * statistics.median(ratios):.0f}%** | {json.dumps(stages[variant])} |")
            lines += cpu_budget(paired)
        if "c" in args.parts:
            lines += ["## (c) Peak memory", "", "`mmsa score` on text-only dumps (`/usr/bin/time -v`, maximum resident set size of the CLI process).", "",
                      "| variant | posts | wall s | posts/s | peak RSS MiB | load avg (1/5/15) |", "| --- | ---: | ---: | ---: | ---: | --- |"]
            for variant in args.rss_variants:
                for n in args.rss_posts:
                    dump = make_dump(site, base, n, False, dev_texts)
                    out = runs / f"rss-{variant}-{n}"
                    run = run_timed(score_cmd(f"{base}/{dump.name}", out), dict(env, MMSA_BACKEND=variant))
                    lines.append(f"| {variant} | {n} | {run.wall:.1f} | {n / run.wall:.1f} | {run.rss / 1024:.0f} | {load_avg()} |")
                    print(lines[-1], flush=True)
            lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=128, help="(a) posts per timed run")
    ap.add_argument("--runs", type=int, default=3, help="(a) timed runs per setting")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--compile-budget", type=int, default=300, help="(a) seconds allowed for the torch.compile run")
    ap.add_argument("--e2e-posts", type=int, default=5000)
    ap.add_argument("--e2e-runs", type=int, default=3)
    ap.add_argument("--e2e-variants", nargs="+", default=["onnx"], choices=BACKENDS, help="engine backends ($MMSA_BACKEND)")
    ap.add_argument("--e2e-switch", nargs="*", type=float, default=[],
                    help="(b) also run `mmsa score` (last backend) under these sys.setswitchinterval values, seconds")
    ap.add_argument("--e2e-dask-workers", nargs="*", type=int, default=[],
                    help="(b) also run `mmsa score --runner dask` with these numbers of worker processes")
    ap.add_argument("--e2e-server", action="store_true",
                    help="(b) also run `mmsa score` (last backend) against a running `prefect server start`")
    ap.add_argument("--rss-posts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--rss-variants", nargs="+", default=["onnx"], choices=BACKENDS)
    ap.add_argument("--parts", default="abc", help="which of a, b, c to run")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="(a), (b): the engine's device; on cuda (a) times the torch backend under autocast")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmsa-bench-infer")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "infer.md")
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_child:
        compile_child(args.posts, args.runs)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = ["# Inference benchmark", "",
             f"Machine: {cpu}, {os.cpu_count()} CPUs ({cpu_threads()} usable by this process), {gpu}; Python "
             f"{platform.python_version()} ({os.path.realpath(sys.executable)}), torch {torch.__version__}. "
             f"Generated by `benchmarks/bench_infer.py "
             f"{' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
             f"(1/5/15 min) at start: {load_avg()}.", ""]
    if "a" in args.parts:
        (part_a_cuda if args.device == "cuda" else part_a)(args, lines)
    if "b" in args.parts or "c" in args.parts:
        part_bc(args, lines)
    lines.append(f"Load average at the end: {load_avg()}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
