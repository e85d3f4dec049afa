"""Shared test setup: a private PREFECT_HOME and one Prefect test harness per session."""

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="mmsa-prefect-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MMSA_CACHE", tempfile.mkdtemp(prefix="mmsa-cache-"))  # exported ONNX graphs
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary) Prefect API for tests that run flows; exported as $PREFECT_API_URL too, so the
    commands those tests call use it rather than start a server of their own (flows.api.LocalAPI)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield
        finally:
            del os.environ["PREFECT_API_URL"]
