"""flows.api.LocalAPI: the run's own Prefect API server, started before prefect is imported."""

import json
import os
import subprocess
import sys

import httpx

SCRIPT = """
import json, sys
from flows.api import LocalAPI

api = LocalAPI()
assert "prefect" not in sys.modules  # started before prefect is imported
process = api._process
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

@flow(name="local-api-check")
def check():
    return 7

with api:
    url = PREFECT_API_URL.value()
    heartbeat = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    result = check()
    import httpx
    runs = httpx.post(f"{url}/flow_runs/filter", json={}).json()
print(json.dumps({"url": url, "api_url": api.url, "result": result, "runs": [r["state_type"] for r in runs],
                  "heartbeat": heartbeat, "heartbeat_after": PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value(),
                  "after": PREFECT_API_URL.value(), "exit_code": process.poll()}))
"""


def test_a_run_without_a_configured_server_reports_to_its_own_which_stops_after(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["url"] == out["api_url"] and out["url"].startswith("http://127.0.0.1:")
    assert out["result"] == 7 and out["runs"] == ["COMPLETED"]  # the flow run was recorded by that server
    assert out["heartbeat"] is None and out["heartbeat_after"] == 180  # none for a server that ends with the run
    assert out["after"] in (None, "") and out["exit_code"] is not None  # settings restored, server stopped
    try:
        httpx.get(f"{out['url']}/health", timeout=2)
        answered = True
    except httpx.HTTPError:
        answered = False
    assert not answered


def test_a_configured_server_is_used_and_none_is_started(prefect_harness, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from flows.api import LocalAPI

    harness = PREFECT_API_URL.value()
    assert LocalAPI()._process is None  # $PREFECT_API_URL names one: nothing started
    monkeypatch.delenv("PREFECT_API_URL")
    api = LocalAPI()  # only Prefect's settings name it: started, then stopped once they are read
    process = api._process
    assert process is not None
    with api:
        assert PREFECT_API_URL.value() == harness and process.poll() is not None


SERVER_APP = """
import gc, json
from datetime import timedelta
from docket import Docket
from flows.api import server_app
from prefect.server.api import background_workers

app = server_app()
worker = background_workers.Worker(Docket(name="check", url="memory://check"))
print(json.dumps({"routes": len(app.routes), "gc": gc.isenabled(),
                  "polls": [worker.minimum_check_interval / timedelta(seconds=1), worker.scheduling_resolution / timedelta(seconds=1)]}))
"""


def test_the_server_process_builds_prefects_app_with_a_slower_task_worker_poll_and_the_collector_back_on(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_UI_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", SERVER_APP], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["routes"] > 1 and out["gc"] is True and out["polls"] == [2.0, 2.0]
