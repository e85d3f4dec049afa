"""Shared test setup: a private PREFECT_HOME and one Prefect test harness per session."""

import os
import shutil
import tempfile

_OWN_DIRS = []  # temporary folders this session made, removed when it ends


def _private_dir(var: str, prefix: str) -> None:
    if var not in os.environ:
        os.environ[var] = tempfile.mkdtemp(prefix=prefix)
        _OWN_DIRS.append(os.environ[var])


_private_dir("PREFECT_HOME", "mmsa-prefect-")  # set before prefect is imported anywhere
_private_dir("MMSA_CACHE", "mmsa-cache-")  # exported ONNX graphs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The same fetch path on every machine: `auto` would mean worker processes on more than 2 cores. The process
# path has tests of its own (test_fetch_processes, test_s3); MMSA_FETCH_PROCESSES=2 runs the whole suite through it.
os.environ.setdefault("MMSA_FETCH_PROCESSES", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

# Prefect configures logging the first time it is used; done under one test's capsys, its console handler would
# write to that test's closed stream ever after.
ensure_logging_setup()


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary) Prefect API for tests that run flows; exported as $PREFECT_API_URL too, so the
    commands those tests call use it rather than start an ephemeral server of their own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield
        finally:
            del os.environ["PREFECT_API_URL"]


def pytest_unconfigure(config):
    for folder in _OWN_DIRS:
        shutil.rmtree(folder, ignore_errors=True)
