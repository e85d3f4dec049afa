"""The Prefect API a command's flows report to: the configured server, else one of our own for the run.

With no server configured, Prefect starts an ephemeral one when the flow's client first needs it: only
after this process has imported the server's modules (about 4 s of CPU here, needed for nothing else),
and then the flow waits while the server boots in its own process (about 8 s of CPU). `LocalAPI()`,
called first thing, starts that same server process (the command Prefect runs) at once instead, so it
boots on the other core while this process imports the flow and loads the model
(benchmarks/results/infer.md, "(b) fourth CPU session"). Dask workers, being other processes, get its
URL too; each would otherwise start an ephemeral server of its own, slowly.
The server process runs `server_app`, Prefect's own app booted a little cheaper for a server that lives one
command.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path


class LocalAPI:
    """Starts the server process on creation, before prefect is imported (unless $PREFECT_API_URL names a
    server); `with api:` waits until it answers and points Prefect at it for the block (or stops it, if
    Prefect's settings name a server or forbid an ephemeral one), then flushes the run's logs and stops it."""

    def __init__(self):
        self.url: str | None = None
        self._process: subprocess.Popen | None = None
        self._settings = None
        if not os.environ.get("PREFECT_API_URL"):
            self._start()
            atexit.register(self.stop)  # also when the command fails before its `with`

    def _start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"
        # The command and environment of prefect.server.api.server.SubprocessASGIServer (no UI, ephemeral),
        # with server_app as the factory, less the block types' registration at start: it imports every installed
        # Prefect collection (prefect-dask brings dask and distributed), 1.2 of its 6.3 s here, for block types no
        # run uses.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parents[1]), "--factory",
             "flows.api:server_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                 "PREFECT_API_BLOCKS_REGISTER_ON_START": "false", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"},
        )

    def _wait(self, timeout: float) -> bool:
        """True once the server answers; False if its process ended (Prefect then starts its own)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the Prefect API server at {self.url} did not answer within {timeout} s")

    def __enter__(self) -> LocalAPI:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            get_current_settings,
            temporary_settings,
        )

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            self.stop()  # a server configured in a profile, or none allowed: Prefect's own behaviour
        elif self._process is not None and self._wait(settings.server.ephemeral.startup_timeout_seconds):
            # No flow-run heartbeats: they let a lasting server mark a run that died as crashed, and this
            # one ends with the command; stopping their thread cost every run up to 1 s at its end.
            self._settings = temporary_settings({PREFECT_API_URL: self.url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
            self._settings.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._settings is not None:
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # the run's last log lines, before the server goes
            self._settings.__exit__(*exc)
            self._settings = None
        self.stop()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def server_app():
    """The factory LocalAPI's server process runs: Prefect's `create_app`, with two changes for a server that
    lives one command, together about 1 s of CPU per 5,000-post run (benchmarks/results/infer.md, "(b)
    thirteenth CPU session"):
    - no garbage collection while Prefect's server modules are imported and the app is built (the objects
      made at start-up live as long as the process, and the collector scanned them again and again);
    - its task worker (docket) looks for due work every 2 s instead of 4 times a second: that polling was
      over a quarter of the idle server's CPU, taken from the run on the same cores, and its work (log and
      run clean-ups) is not urgent."""
    with imports_without_gc():
        from prefect.server.api import background_workers
        from prefect.server.api.server import create_app

        poll = timedelta(seconds=2)
        background_workers.Worker = functools.partial(
            background_workers.Worker, minimum_check_interval=poll, scheduling_resolution=poll
        )
        return create_app()


@contextlib.contextmanager
def imports_without_gc():
    """No garbage collection while Prefect's modules (and a flow's) are imported: the imports make objects that
    live as long as the process, which the collector only scanned again and again (about 1 s of CPU per command
    here; benchmarks/results/infer.md, "(b) thirteenth CPU session")."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
