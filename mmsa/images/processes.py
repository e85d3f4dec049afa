"""Image work in worker processes: download, decode and resize on every core, not one interpreter's.

`mmsa fetch` and `mmsa score` fetch with threads of one process by default on small machines; there the
interpreter lock caps download + decode + resize near one core's worth. With FetchConfig.processes = N
(`--fetch-processes N`), mmsa.images.fetch.fetch_images hands each URL to one of N worker processes instead,
through this module's `session`:

- each worker runs the very same `Fetcher.fetch` (mmsa.images.worker) as the thread path (address policy on
  every hop, pinned connections, deadlines by watchdog, byte and pixel caps, retries, statuses, the cache's
  atomic writes), in `FetchConfig.workers` threads of its own, with its share of the cores as decode slots; the per-host cap holds across the workers: its host slots are
  counters in shared memory (one per hash bucket of host names), so a host sees at most `per_host` downloads;
- the preprocessed images come back through a file in shared memory (/dev/shm), mapped by the parent and
  by every worker: one slot of image_size x image_size x 3 bytes per image in flight. The worker writes
  the slot, sends the small FetchResult (no pixels) through a queue, the parent copies the slot out and
  reuses it. Nothing per image is pickled but the URL and the result row;
- the parent hands a worker a URL as soon as one of its slots is free (the least busy worker first) and
  completes the URL's future as its result arrives, so `on_result` (and the model behind it) is fed as
  images arrive, in whatever order they finish.

The workers are started once per process and kept for later calls: forked from a fork server that imported
mmsa.images.worker (and torch) once, since a fork of a process that runs threads is unsafe and a spawned worker
would import torch itself, seconds of CPU per worker. A worker that dies fails its URLs' futures with
WorkerDied (the shard's task then fails and is retried, as for any crash), and a new set of workers
is started on the next call. Inside a daemon process (a Dask worker started by a nanny) no children can
be started: the thread path is used there, and a cluster gets its parallelism from one Dask worker per core.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmsa.faults import PermanentError, as_permanent
from mmsa.images.worker import Fetcher
from mmsa.options import usable_cores


class WorkerDied(RuntimeError):
    """A fetch worker process ended while it held URLs (killed, out of memory, a crash in a decoder)."""


def resolve_processes(requested: int | None) -> int:
    """The number of worker processes to use: `requested`, or for None one per core where there are more
    than 2 cores and 0 (threads of this process) on smaller machines; 0 too where this process cannot have
    children (a daemon process)."""
    n = (usable_cores() if usable_cores() > 2 else 0) if requested is None else max(0, int(requested))
    if n and mp.current_process().daemon:
        return 0
    return n


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class _Workers:
    """N worker processes, each with its own task queue, and one result queue read by a thread here."""

    def __init__(self, n: int):
        ctx = _context()
        self.n = n
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(n)]
        # Downloads in flight per host (hashed into _HOST_BUCKETS), shared by the workers: the per-host cap holds
        # across processes, as one semaphore per host does across threads.
        # Kept referenced here: a semaphore collected in this process is unlinked, before a worker opened it.
        self.hosts = (ctx.Array("i", _HOST_BUCKETS, lock=False), ctx.Condition())
        self.procs = [ctx.Process(target=_worker_main, args=(i, n, self.tasks[i], self.results, self.hosts), daemon=True,
                                  name=f"mmsa-fetch-{i}") for i in range(n)]
        for proc in self.procs:
            proc.start()
        self.broken = False
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Future, int, _Session, int]] = {}  # task id -> (future, worker, session, slot)
        self._ids = itertools.count()
        self._reader = threading.Thread(target=self._read, name="mmsa-fetch-results", daemon=True)
        self._reader.start()

    def send_all(self, message: tuple) -> None:
        for q in self.tasks:
            q.put(message)

    def submit(self, session: _Session, worker: int, url: str, retry_failed: bool, slot: int) -> Future:
        future: Future = Future()
        with self._lock:
            if self.broken:
                raise WorkerDied("a fetch worker process died; the workers are closed")
            task = next(self._ids)
            self._pending[task] = (future, worker, session, slot)
        self.tasks[worker].put(("fetch", session.job, task, url, retry_failed, slot))
        return future

    def _read(self) -> None:
        checked = time.monotonic()
        while True:
            if time.monotonic() - checked > 0.5:  # twice a second, also while other workers' results flow
                checked = time.monotonic()
                if not self.broken and any(not p.is_alive() for p in self.procs):
                    self._fail_dead()
            try:
                message = self.results.get(timeout=0.5)
            except queue.Empty:
                if self.broken and not self._pending:
                    return
                continue
            except (EOFError, OSError):
                return
            if message is None:
                return
            kind, task, payload = message
            with self._lock:
                entry = self._pending.pop(task, None)
            if entry is None:
                continue
            future, worker, session, slot = entry
            try:
                if kind != "done":
                    raise payload if isinstance(payload, PermanentError) else RuntimeError(f"fetch worker failed: {payload}")
                session.finished(worker, slot, future, payload)
            except Exception as exc:  # noqa: BLE001 - the caller gets it; this thread serves the other futures
                session.release(worker, slot)
                if not future.done():
                    future.set_exception(exc)

    def _fail_dead(self) -> None:
        dead = {i for i, p in enumerate(self.procs) if not p.is_alive()}
        with self._lock:
            self.broken = True
            lost = [(t, e) for t, e in self._pending.items() if e[1] in dead]
            for task, _ in lost:
                del self._pending[task]
        for _, (future, worker, session, slot) in lost:
            session.release(worker, slot)
            future.set_exception(WorkerDied(f"fetch worker process {worker} died "
                                            f"(exit code {self.procs[worker].exitcode})"))

    def close(self) -> None:
        for q in self.tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self.broken = True
        try:
            self.results.put(None)
        except (OSError, ValueError):
            pass


def _context():
    """Workers forked from a fork server (a process that started with nothing but this module's imports, so a
    fork of it is safe, unlike one of a process running threads) that imported mmsa.images.worker, torch with it, once:
    a worker then starts in milliseconds instead of importing them itself (seconds of CPU each)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mmsa.images.worker", "mmsa.images.processes"])
    return ctx


_HOST_BUCKETS = 1024  # hosts hashed into this many shared counters; two hosts sharing one share its cap


_WORKERS: _Workers | None = None
_WORKERS_LOCK = threading.Lock()
_JOBS = itertools.count()


def _workers(n: int) -> _Workers:
    """This process's workers, started on first use (or anew after one died, or for another N)."""
    global _WORKERS
    with _WORKERS_LOCK:
        if _WORKERS is not None and (_WORKERS.broken or _WORKERS.n != n):
            _WORKERS.close()
            _WORKERS = None
        if _WORKERS is None:
            _WORKERS = _Workers(n)
        return _WORKERS


def worker_pids() -> list[int]:
    """The process ids of this process's fetch workers (none before the first fetch on them, or after shutdown)."""
    with _WORKERS_LOCK:
        return [] if _WORKERS is None else [p.pid for p in _WORKERS.procs]


@atexit.register
def shutdown() -> None:
    """Stop this process's workers (at exit, or to free their memory)."""
    global _WORKERS
    with _WORKERS_LOCK:
        if _WORKERS is not None:
            _WORKERS.close()
            _WORKERS = None
            # And the fork server, waited for: it (and the workers it reaped) then count in this process's
            # children's CPU time, as spawned workers would (what a benchmark's wait4 reads).
            from multiprocessing import forkserver

            try:
                forkserver._forkserver._stop()
            except (AttributeError, OSError, ChildProcessError):
                pass


class _Session:
    """One fetch_images call on the workers: its config and cache sent to every worker once, its image slots."""

    def __init__(self, config, cache, keep_images: bool, retry_failed: bool, n: int):
        self.workers = _workers(n)
        self.job = next(_JOBS)
        self.retry_failed = retry_failed
        self.keep_images = keep_images
        self.capacity = 2 * config.workers * n  # URLs in flight, as the thread path keeps 2 x workers
        self.shape = (config.image_size, config.image_size, 3)
        self._lock = threading.Lock()
        self._load = [0] * n  # URLs in flight per worker
        self._free = list(range(self.capacity))
        self._path = None
        self._images = None
        if keep_images:
            fd, self._path = tempfile.mkstemp(prefix="mmsa-fetch-", suffix=".u8", dir=_shm_dir())
            os.ftruncate(fd, self.capacity * int(np.prod(self.shape)))
            os.close(fd)
            self._images = np.memmap(self._path, dtype=np.uint8, mode="r+", shape=(self.capacity, *self.shape))
        per_worker = replace(config, processes=0)
        self.workers.send_all(("job", self.job, per_worker, cache, keep_images, self._path, self.capacity))

    def submit(self, url: str) -> Future:
        with self._lock:
            worker = min(range(len(self._load)), key=self._load.__getitem__)
            self._load[worker] += 1
            slot = self._free.pop()
        try:
            return self.workers.submit(self, worker, url, self.retry_failed, slot)
        except BaseException:
            self.release(worker, slot)
            raise

    def finished(self, worker: int, slot: int, future: Future, payload: tuple) -> None:
        result, has_image = payload
        if has_image and self._images is not None:  # None: the call ended (it raised) before this came
            result = replace(result, image=np.array(self._images[slot]))
        self.release(worker, slot)
        future.set_result(result)

    def release(self, worker: int, slot: int) -> None:
        with self._lock:
            self._load[worker] -= 1
            self._free.append(slot)

    def close(self) -> None:
        if not self.workers.broken:
            self.workers.send_all(("end", self.job))
        if self._path is not None:
            self._images = None
            Path(self._path).unlink(missing_ok=True)


class session:
    """`with session(config, cache, keep_images, retry_failed) as (submit, capacity):` submit(url) gives a Future of
    the URL's FetchResult (with its image, when kept); at most `capacity` may be in flight. What
    mmsa.images.fetch.fetch_images submits to when config.processes asks for worker processes."""

    def __init__(self, config, cache, keep_images: bool, retry_failed: bool, n: int | None = None):
        n = n or resolve_processes(config.processes)
        self._session = _Session(config, cache, keep_images, retry_failed, n)

    def __enter__(self):
        return self._session.submit, self._session.capacity

    def __exit__(self, *exc) -> None:
        self._session.close()


# --- In the worker process ---------------------------------------------------------------------------


@contextmanager
def _shared_host_slot(hosts, per_host: int, host: str):
    """The per-host cap across processes: at most `per_host` downloads at once from `host`'s bucket."""
    counts, cond = hosts
    bucket = zlib.crc32(host.lower().encode("utf-8", "surrogatepass")) % _HOST_BUCKETS
    with cond:
        while counts[bucket] >= per_host:
            cond.wait()
        counts[bucket] += 1
    try:
        yield
    finally:
        with cond:
            counts[bucket] -= 1
            cond.notify_all()


def _worker_main(index: int, n: int, tasks, results, hosts) -> None:
    import torch

    torch.set_num_threads(1)  # one core's share: the worker processes are the parallelism
    # Decoding slots per process: this process's share of the cores (the thread path's rule, per process).
    decode_slots = threading.BoundedSemaphore(max(1, usable_cores() // n))
    jobs: dict[int, tuple] = {}

    def run(job: int, task: int, url: str, retry_failed: bool, slot: int) -> None:
        fetcher, images, threads = jobs[job]
        try:
            result = fetcher.fetch(url, retry_failed)
            has_image = result.image is not None
            if has_image:
                images[slot] = result.image
                result = replace(result, image=None)
            results.put(("done", task, (result, has_image)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            # A permanent failure goes as itself (it pickles), so the run stops with its one line (mmsa.faults).
            results.put(("error", task, as_permanent(exc) or f"{type(exc).__name__}: {exc}"))

    while True:
        message = tasks.get()
        if message is None:
            break
        kind = message[0]
        if kind == "job":
            _, job, config, cache, keep_images, path, capacity = message
            images = None
            if path is not None:
                shape = (capacity, config.image_size, config.image_size, 3)
                images = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
            fetcher = Fetcher(config, cache, keep_images, decode_slots=decode_slots,
                              host_slot=functools.partial(_shared_host_slot, hosts, config.per_host)).__enter__()
            jobs[job] = (fetcher, images, ThreadPoolExecutor(config.workers, thread_name_prefix="mmsa-fetch"))
        elif kind == "fetch":
            _, job, task, url, retry_failed, slot = message
            jobs[job][2].submit(run, job, task, url, retry_failed, slot)
        elif kind == "end":
            fetcher, images, threads = jobs.pop(message[1])
            threads.shutdown(wait=True)
            fetcher.__exit__(None, None, None)
            del images
    for fetcher, _, threads in jobs.values():
        threads.shutdown(wait=False, cancel_futures=True)
