"""Compare CPython builds on this project's Python-heavy work, which is what a 2-core run spends
beside the model: CPU seconds of

- server: Prefect's API server start (import + create_app, what its ephemeral server runs);
- client: the scoring command's own imports (mmsa.flows.score, mmsa.infer);
- fetch: mmsa.images.worker per image (download from 127.0.0.1, decode, resize, cache), one thread.

Each measure runs in a fresh process of each interpreter, interleaved, and the median of --runs is
reported. Every interpreter must have the project installed: pass the venvs' pythons, e.g.

    .venv/bin/python benchmarks/bench_python.py /tmp/venv-a/bin/python /tmp/venv-b/bin/python --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMAGES = 600  # per fetch run; the first 100 warm the connection and the code paths


def child(what: str, base: str, cache: str) -> None:
    """Print the CPU seconds of one measure, run in this process."""
    if what == "server":
        import prefect.server.api.server as server

        server.create_app(ephemeral=True)
    elif what == "client":
        import mmsa.flows.score  # noqa: F401
        import mmsa.infer  # noqa: F401
    else:
        from mmsa.images.cache import ImageCache
        from mmsa.images.config import FetchConfig
        from mmsa.images.worker import Fetcher

        urls = [f"{base}/images/img{i:06d}.jpg" for i in range(IMAGES)]
        config = FetchConfig(image_size=260, allow_hosts=("127.0.0.1",), workers=1)
        with Fetcher(config, ImageCache(cache), keep_images=True) as fetcher:
            for url in urls[:100]:
                fetcher.fetch(url, False)
            c0 = time.thread_time()
            for url in urls[100:]:
                fetcher.fetch(url, False)
        print((time.thread_time() - c0) / (IMAGES - 100))
        return
    t = os.times()
    print(t.user + t.system)


def describe(python: str) -> str:
    code = "import os, platform, sys; print(platform.python_version(), os.path.realpath(sys.executable))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pythons", nargs="*")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "BASE", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from benchmarks.bench_infer import make_dump
    from mmsa.demo import serve_folder

    work = Path(tempfile.mkdtemp(prefix="mmsa-bench-python-"))
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cpu: dict[tuple[str, str], list[float]] = {}
    with serve_folder(work / "site") as base:
        make_dump(work / "site", base, IMAGES, True, ["-"])
        for run in range(args.runs):
            for n, python in enumerate(args.pythons):
                for what in ("server", "client", "fetch"):
                    cache = work / f"cache-{run}-{n}"  # never deleted before the end: ext4 (infer.md)
                    out = subprocess.run([python, __file__, "--child", what, base, str(cache)], env=env, cwd=REPO,
                                         capture_output=True, text=True, check=True).stdout.split()[-1]
                    cpu.setdefault((python, what), []).append(float(out))
    print(f"CPU seconds, median of {args.runs} fresh processes each (interleaved); fetch in ms per image, one thread.\n")
    print("| interpreter | server start s | client imports s | fetch ms per image |")
    print("| --- | ---: | ---: | ---: |")
    for python in args.pythons:
        med = {w: statistics.median(cpu[(python, w)]) for w in ("server", "client", "fetch")}
        scale = {"server": 1, "client": 1, "fetch": 1000}  # fetch in ms
        spread = {w: f"{min(cpu[(python, w)]) * scale[w]:.2f}-{max(cpu[(python, w)]) * scale[w]:.2f}" for w in med}
        print(f"| {describe(python)} | {med['server']:.2f} ({spread['server']}) | {med['client']:.2f} ({spread['client']}) "
              f"| {1000 * med['fetch']:.2f} ({spread['fetch']}) |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
