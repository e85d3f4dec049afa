"""The GPU machine's check (run by benchmarks/gpu_check.sh): model alone and `mmsa score` end to end on a few
thousand posts whose images are served from 127.0.0.1, with GPU utilisation (nvidia-smi sampling) and CPU use.

    python3 benchmarks/gpu_check.py [--posts 6000] [--device cuda] [--out FILE] [--budget 400]

1. Generates N posts with a JPEG each (224-640 px) in --workdir, on every core, and serves them from a threaded
   HTTP/1.1 server in a process of its own.
2. Model alone: the engine (torch backend; bf16 autocast on CUDA) over the posts' images decoded beforehand,
   called per 512-post shard from 2 threads as the flow calls it; median of 3 after a warm-up.
3. `mmsa fetch` alone with 1 worker process and with one per core (does the image work scale with the cores?).
4. `mmsa score` end to end against one running `prefect server start` (as deployments run; no server start per
   run), fresh output and image cache per run, for: threads (--fetch-processes 0), one worker process per core
   (--fetch-processes auto), and that plus --gpu-decode. Posts/s by the command's wall clock and by the flow's
   own (the runs table: started to finished, without the interpreter's and Prefect's start).
5. During each: nvidia-smi sampled every 200 ms (utilisation.gpu, memory.used) and the machine's CPU use from
   /proc/stat (cores busy on average).

Stops starting new variants once --budget seconds have passed, and writes what it has. A CPU-only dry run
(--device cpu --posts 200) checks everything but the GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable
STARTED = time.monotonic()

SERVER = """
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class Quiet(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=sys.argv[1]))
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""

WORDS = ("love", "great", "new", "store", "awful", "broken", "today", "price", "launch", "support", "fast", "slow",
         "happy", "angry", "meh", "queue", "delivery", "app", "update", "refund")


def make_image(args) -> None:
    import numpy as np
    from PIL import Image

    path, i = args
    rng = np.random.default_rng(i)
    w, h = int(rng.integers(224, 641)), int(rng.integers(224, 641))
    base = rng.integers(0, 256, size=3)
    grad = np.linspace(0.6, 1.3, w)[None, :, None]
    noise = rng.integers(-50, 50, size=(h, w, 3))
    Image.fromarray(np.clip(base * grad + noise, 0, 255).astype(np.uint8)).save(path, quality=85)


def make_site(folder: Path, n: int) -> list[str]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    todo = [(folder / "images" / f"img{i:06d}.jpg", i) for i in range(n)]
    todo = [t for t in todo if not t[0].exists()]
    if todo:
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(make_image, todo, chunksize=32))
    texts = []
    for i in range(n):
        rng = __import__("random").Random(i)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + f" #{i}")
    rows = [{"post_id": f"p{i:06d}", "created_at": f"2026-11-{16 + i % 4}T10:00:00Z", "text": texts[i],
             "image_url": f"BASE/images/img{i:06d}.jpg"} for i in range(n)]
    (folder / "posts.template").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return texts


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([PY, "-c", SERVER, str(folder)], stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


class Sampler:
    """nvidia-smi every 200 ms (where there is one) and /proc/stat's CPU time, over a `with` block."""

    def __init__(self):
        self.gpu: list[float] = []
        self.mem: list[float] = []
        self._proc = None

    def __enter__(self):
        self.cpu0, self.t0 = _cpu_ticks(), time.monotonic()
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "200"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.gpu.append(util)
            self.mem.append(mem)

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.t0
        busy, total = (a - b for a, b in zip(_cpu_ticks(), self.cpu0))
        self.cores_busy = os.cpu_count() * busy / total if total else 0.0
        if self._proc:
            self._proc.terminate()
            self._proc.wait()
            self._reader.join(timeout=2)

    def gpu_text(self) -> str:
        if not self.gpu:
            return "n/a (no nvidia-smi)"
        return f"mean {statistics.mean(self.gpu):.0f}%, max {max(self.gpu):.0f}% ({len(self.gpu)} samples; peak {max(self.mem):.0f} MiB)"


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def model_alone(texts: list[str], folder: Path, device: str, runs: int = 3) -> tuple[list[float], Sampler]:
    from mmsa.images.decode import preprocess
    from mmsa.infer import Engine
    from mmsa.model import load_model
    from mmsa.pipeline import DEFAULT_SHARD_SIZE as SHARD

    model = load_model("default")
    n = len(texts)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        images = list(pool.map(lambda i: preprocess((folder / "images" / f"img{i:06d}.jpg").read_bytes(),
                                                    model.image_size, 50_000_000), range(n)))
    engine = Engine(model, backend="torch" if device.startswith("cuda") else None, device=device)
    engine.warm_up()
    engine.predict(texts[:SHARD], images[:SHARD])
    walls = []
    with Sampler() as sampler:
        for _ in range(runs):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(2) as shards:  # two callers, as the flow's two shard tasks
                list(shards.map(lambda s: engine.predict(texts[s:s + SHARD], images[s:s + SHARD]), range(0, n, SHARD)))
            walls.append(time.perf_counter() - t0)
    return walls, sampler


def prefect_server(env: dict) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-services"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("`prefect server start` did not come up")
            time.sleep(0.5)


def timed(cmd: list[str], env: dict) -> tuple[float, "Sampler"]:
    """Run one command under the CPU/GPU sampler: (wall seconds, the sampler); a failure raises with its output."""
    with Sampler() as sampler:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, sampler


def fetch_alone(dump: Path, work: Path, processes: str, env: dict) -> dict:
    cache = work / f"fetch-{processes}"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [PY, "-m", "mmsa.cli", "fetch", str(dump), "--cache", str(cache), "--allow-hosts", "127.0.0.1", "--quiet",
           "--fetch-processes", processes]
    wall, sampler = timed(cmd, env)
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall": wall, "sampler": sampler}


def score(dump: Path, work: Path, name: str, extra: list[str], env: dict) -> dict:
    out = work / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PY, "-m", "mmsa.cli", "score", str(dump), "--db", str(out / "db.duckdb"), "--out", str(out / "parquet"),
           "--allow-hosts", "127.0.0.1", "--quiet", *extra]
    wall, sampler = timed(cmd, env)
    import duckdb

    with duckdb.connect(str(out / "db.duckdb"), read_only=True) as con:
        flow_s, scored, stages = con.execute(
            "SELECT epoch(finished_at) - epoch(started_at), posts_scored, stage_seconds FROM runs").fetchone()
        ok = con.execute("SELECT count(*) FROM scored_posts WHERE image_status = 'ok'").fetchone()[0]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "flow": flow_s, "scored": scored, "ok": ok, "stages": json.loads(stages), "sampler": sampler,
            "command": "mmsa score DUMP --db FRESH --out FRESH --allow-hosts 127.0.0.1 --quiet " + " ".join(extra)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=6000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmsa-gpu-check")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.md")
    ap.add_argument("--budget", type=float, default=400, help="seconds after which no new variant starts")
    args = ap.parse_args()

    import torch

    lines = ["# GPU check: model alone and `mmsa score` end to end", ""]
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines += [f"Machine: {os.cpu_count()} cores, GPU {gpu_name}; Python {platform.python_version()}, torch {torch.__version__}. "
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Script: `benchmarks/gpu_check.sh` "
              f"(`benchmarks/gpu_check.py --posts {args.posts} --device {args.device}`).", ""]
    print("\n".join(lines), flush=True)
    site = args.workdir / "site"
    t0 = time.monotonic()
    texts = make_site(site, args.posts)
    lines.append(f"{args.posts} posts, one JPEG each (224-640 px), made in {time.monotonic() - t0:.0f} s; served from "
                 "127.0.0.1 by a threaded HTTP/1.1 server in its own process.")
    server, base = serve(site)
    env = dict(os.environ, PREFECT_HOME=str(args.workdir / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", HF_HUB_OFFLINE="1", MMSA_CACHE=str(args.workdir / "cache"))
    api = None
    try:
        dump = args.workdir / "posts.jsonl"
        dump.write_text((site / "posts.template").read_text().replace("BASE", base))
        walls, sampler = model_alone(texts, site, args.device)
        alone = args.posts / statistics.median(walls)
        lines += ["", "| what | command | wall s | posts/s (wall) | flow s | posts/s (flow) | GPU utilisation | CPU cores busy (whole machine, /proc/stat) | images ok |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
                  f"| model alone | engine.predict per 512-post shard from 2 threads, in process (median of 3) "
                  f"| {statistics.median(walls):.2f} | **{alone:.0f}** | - | - | {sampler.gpu_text()} | {sampler.cores_busy:.1f} | - |"]
        print(lines[-1], flush=True)
        for processes in ("1", "auto"):  # image work alone: does it scale with the cores?
            r = fetch_alone(dump, args.workdir, processes, env)
            lines.append(f"| mmsa fetch, --fetch-processes {processes} | `mmsa fetch DUMP --cache FRESH --allow-hosts 127.0.0.1 "
                         f"--fetch-processes {processes}` | {r['wall']:.2f} | {args.posts / r['wall']:.0f} images/s | - | - "
                         f"| {r['sampler'].gpu_text()} | {r['sampler'].cores_busy:.1f} | - |")
            print(lines[-1], flush=True)
        api, url = prefect_server(env)
        env["PREFECT_API_URL"] = url
        variants = [("threads", ["--fetch-processes", "0"]), ("processes", ["--fetch-processes", "auto"]),
                    ("processes-gpu-decode", ["--fetch-processes", "auto", "--gpu-decode"]), ("threads-again", ["--fetch-processes", "0"])]
        score(dump, args.workdir, "warm-up", ["--fetch-processes", "0"], env)  # the flow registered, caches warm
        results = {}
        for name, extra in variants:
            if time.monotonic() - STARTED > args.budget:
                lines.append(f"| {name} | (not run: the time budget of {args.budget:.0f} s was spent) | | | | | | | |")
                continue
            r = score(dump, args.workdir, name, extra, env)
            results[name] = r
            lines.append(f"| mmsa score, {name} | `{r['command']}` | {r['wall']:.2f} | {r['scored'] / r['wall']:.0f} "
                         f"| {r['flow']:.2f} | **{r['scored'] / r['flow']:.0f}** | {r['sampler'].gpu_text()} "
                         f"| {r['sampler'].cores_busy:.1f} | {r['ok']} |")
            print(lines[-1], flush=True)
        lines += ["", "Stage seconds reported by each run (summed over shards; stages overlap):", ""]
        lines += [f"- {name}: {json.dumps(r['stages'])}" for name, r in results.items()]
        if results:
            best = max(results, key=lambda k: results[k]["scored"] / results[k]["flow"])
            rate = results[best]["scored"] / results[best]["flow"]
            lines += ["", f"Best end to end: **{rate:.0f} posts/s** ({best}, by the flow's clock) = {100 * rate / alone:.0f}% of "
                      f"the model alone ({alone:.0f} posts/s). Goal: >= 2,000 posts/s, within 50% of the model alone."]
    finally:
        if api is not None:
            api.terminate()
            api.wait()
        server.terminate()
        server.wait()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))
    print(f"wrote {args.out} in {time.monotonic() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
