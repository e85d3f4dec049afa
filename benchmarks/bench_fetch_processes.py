"""Benchmark `mmsa fetch` with worker processes (mmsa.images.processes) against today's threads, on the same URLs.

Run on demand (not part of the test suite):

    .venv/bin/python benchmarks/bench_fetch_processes.py [--images 1500] [--rounds 5] \
        [--out benchmarks/results/fetch_processes.md]

1. Generates N real-looking JPEGs once (800-1600 px; benchmarks/bench_fetch.py's generator) in WORKDIR.
2. Serves them from a threaded HTTP server on 127.0.0.1 in a child process of its own (its CPU is not counted).
3. Runs `mmsa fetch posts.jsonl --cache FRESH --fetch-processes P` for P in 0 (threads), 1, 2, ... as
   subprocesses, the settings alternated in each round, a fresh cache every run (every image downloaded,
   decoded, resized and stored).
4. Per run: the command's wall clock, the fetch's own seconds (what `mmsa fetch` prints: from reading the dump
   to the status table, worker start-up included) and the CPU seconds of the command and all its children
   (user + system, from wait4's rusage). Reports medians, images/s and CPU-s per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

MMSA = REPO / ".venv" / "bin" / "mmsa"


SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

root = Path(sys.argv[1])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = urlsplit(self.path)
        body = (root / parts.path.lstrip("/")).read_bytes() + parts.query.encode()  # ?v=K: other bytes, same pixels
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def serve(root: Path) -> tuple[subprocess.Popen, str]:
    """A threaded HTTP/1.1 server for `root` in its own process; returns it and its base URL. URL `/NAME?v=K`
    gives NAME's bytes with `v=K` appended after the JPEG's end: bytes of their own (so each is decoded and
    stored, not found in the cache by its hash) with the same pixels."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def run_fetch(dump: Path, work: Path, processes: int, workers: int) -> dict:
    cache = work / f"cache-p{processes}"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [str(MMSA), "fetch", str(dump), "--cache", str(cache), "--allow-hosts", "127.0.0.1", "--quiet",
           "--workers", str(workers), "--per-host", str(workers), "--fetch-processes", str(processes)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output}")
    # wait4's rusage covers the command and its children it waited for (the worker processes, joined at exit).
    cpu = usage.ru_utime + usage.ru_stime
    fetch_s = float(re.search(r"in ([\d.]+) s \(", output).group(1))
    found = re.search(r"^\s+ok (\d+)", output, re.M)
    ok = int(found.group(1)) if found else 0
    return {"wall": wall, "fetch_s": fetch_s, "cpu": cpu, "ok": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="distinct JPEG files")
    parser.add_argument("--copies", type=int, default=4, help="URLs per file, each with bytes of its own")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", default="0,1,2", help="settings to compare (0: threads)")
    parser.add_argument("--workers", type=int, default=16, help="--workers (threads; per process with processes)")
    parser.add_argument("--workdir", default="/tmp/mmsa-bench-fetch-processes")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fetch_processes.md"))
    args = parser.parse_args()

    from bench_fetch import make_images

    work = Path(args.workdir)
    paths = make_images(work / "images", args.images)[: args.images]
    settings = [int(p) for p in args.processes.split(",")]
    server, base = serve(work / "images")
    try:
        dump = work / "posts.jsonl"
        urls = [f"{base}/{p.name}?v={k}" for k in range(args.copies) for p in paths]
        dump.write_text("".join(
            json.dumps({"post_id": str(i), "created_at": "2026-01-01T00:00:00Z", "text": "x", "image_url": url}) + "\n"
            for i, url in enumerate(urls)))
        half = work / "half.jsonl"
        half.write_text("".join(dump.read_text().splitlines(keepends=True)[: len(urls) // 2]))
        run_fetch(dump, work, settings[-1], args.workers)  # warm the page cache and the imports
        runs: dict[int, list[dict]] = {p: [] for p in settings}
        for r in range(args.rounds):
            order = settings if r % 2 == 0 else settings[::-1]  # alternated: no setting always runs first
            for p in order:
                result = run_fetch(dump, work, p, args.workers)
                small = run_fetch(half, work, p, args.workers)
                # The second half's images alone: start-up (spawning workers, importing torch) cancels out.
                result.update(marginal_s=result["fetch_s"] - small["fetch_s"], marginal_cpu=result["cpu"] - small["cpu"])
                runs[p].append(result)
                print(f"round {r + 1} processes={p}: {result}", flush=True)
    finally:
        server.terminate()
        server.wait()

    def med(p: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[p]) or float("nan")

    n = args.images * args.copies
    m = n - n // 2  # the images of the second half
    one = settings[1] if len(settings) > 1 else settings[0]
    base_rate, base_marginal = n / med(one, "fetch_s"), m / med(one, "marginal_s")
    lines = [
        "# `mmsa fetch`: worker processes against threads",
        "",
        f"What: `mmsa fetch` of {n} image URLs ({args.images} JPEGs of 800-1600 px, each under {args.copies} URLs whose "
        "bytes differ after the JPEG's end, so each is downloaded, decoded, resized and stored) served from 127.0.0.1 "
        "(HTTP/1.1 keep-alive), fresh cache each run: download, decode (draft mode), resize to 224 x 224, store in "
        "the cache, status table.",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; a development machine shared "
        "with other work (medians of alternated runs).",
        f"Method: `{args.rounds}` rounds; in each the settings run one after the other, their order reversed every "
        "other round; the image server runs in a process of its own and its CPU is not counted. CPU-s: user + "
        "system seconds of the command and its worker processes (wait4). fetch s: the seconds `mmsa fetch` "
        "reports (dump read to status table written, worker start-up included). wall s: the whole command. "
        f"Steady state: each run is paired with a run of the dump's first {n // 2} posts; the difference of the two "
        f"(seconds, CPU-s) is what the other {m} images cost, start-up cancelled out.",
        f"Command: `mmsa fetch posts.jsonl --cache FRESH --allow-hosts 127.0.0.1 --quiet --workers {args.workers} "
        f"--per-host {args.workers} --fetch-processes P` (P = 0: threads of one process, today's path)",
        f"Script: `.venv/bin/python benchmarks/bench_fetch_processes.py --images {args.images} --copies {args.copies} "
        f"--rounds {args.rounds}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| setting | fetch s | images/s | vs 1 process | wall s | CPU-s | CPU-ms per image | steady images/s "
        "| vs 1 process | steady CPU-ms per image | ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in settings:
        rate, marginal = n / med(p, "fetch_s"), m / med(p, "marginal_s")
        name = "threads (0)" if p == 0 else f"{p} process{'es' if p > 1 else ''}"
        lines.append(f"| {name} | {med(p, 'fetch_s'):.2f} | {rate:.0f} | {rate / base_rate:.2f}x | {med(p, 'wall'):.2f} "
                     f"| {med(p, 'cpu'):.2f} | {1000 * med(p, 'cpu') / n:.2f} | {marginal:.0f} | {marginal / base_marginal:.2f}x "
                     f"| {1000 * med(p, 'marginal_cpu') / m:.2f} | {runs[p][-1]['ok']} |")
    lines += ["", "Every run:", "", "| setting | round | fetch s | wall s | CPU-s | second half s | second half CPU-s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in settings:
        for r, x in enumerate(runs[p], 1):
            lines.append(f"| {p} | {r} | {x['fetch_s']:.2f} | {x['wall']:.2f} | {x['cpu']:.2f} | {x['marginal_s']:.2f} "
                         f"| {x['marginal_cpu']:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
