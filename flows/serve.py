"""`mmsa serve`: run the deployments of deployments/prefect.yaml from this one process (flow.serve),
for a single machine without a work pool or worker. The yaml stays the one definition of them.

Its entrypoints (`flows/score.py:...`) are relative to the folder above the yaml's: the repository root
in a checkout, the installed mmsa package in a wheel (where flows/ is mmsa/flows/)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mmsa.files import package_dir

PREFECT_YAML = package_dir("mmsa.deployments") / "prefect.yaml"


def load_deployments(path: Path = PREFECT_YAML) -> list[dict]:
    """The `deployments` entries of a prefect.yaml, anchors resolved."""
    return yaml.safe_load(path.read_text())["deployments"]


def runner_deployments(overrides: dict, cron: str | None = None, path: Path = PREFECT_YAML, for_worker: bool = False) -> list:
    """One RunnerDeployment per yaml entry; `overrides` (None: keep the yaml's) replace the scoring
    deployments' parameters, `cron` the schedules' cron. Flows load from their entrypoints, as on a worker;
    `for_worker` keeps the yaml's work pool (registering), else they are for flow.serve (no pool)."""
    from prefect import Flow
    from prefect.schedules import Cron

    root = path.parent.parent
    built = []
    for spec in load_deployments(path):
        flow = Flow.from_source(source=str(root), entrypoint=spec["entrypoint"])
        pool = spec.get("work_pool", {}) if for_worker else {}
        params = dict(spec.get("parameters", {}))
        if "dump_template" in flow.parameters.properties:
            params.update({k: v for k, v in overrides.items() if v is not None})
        schedules = [Cron(cron or s["cron"], timezone=params.get("timezone") or s.get("timezone"))
                     for s in spec.get("schedules", [])]
        built.append(flow.to_deployment(name=spec["name"], parameters=params, schedules=schedules,
                                        description=spec.get("description"), tags=spec.get("tags"),
                                        concurrency_limit=spec.get("concurrency_limit"),
                                        work_pool_name=pool.get("name"), job_variables=pool.get("job_variables")))
    return built


def register(overrides: dict, cron: str | None = None) -> list[str]:
    """Create or update the yaml's deployments on the Prefect server, for a worker of their work pool.

    What `prefect deploy --all --prefect-file deployments/prefect.yaml` does, minus its check for
    online workers, which this environment's Prefect server answers with HTTP 422. Without a server
    (PREFECT_API_URL), or without the yaml's work pool on it, a ValueError says what to do."""
    from prefect.deployments.runner import DeploymentApplyError

    _needs_server("registering")  # a temporary server would forget them when the command ends
    names = []
    for d in runner_deployments(overrides, cron, for_worker=True):
        try:
            names.append(f"{d.flow_name}/{d.name}: {d.apply()}")
        except DeploymentApplyError as exc:
            if "Work pool" not in str(exc):
                raise
            raise ValueError(f"{exc} Create it first: prefect work-pool create {d.work_pool_name} --type process "
                             "(docs/operations.md)") from None
    return names


def serve(overrides: dict, cron: str | None = None) -> None:
    """Run the deployments' schedules and triggered runs from this process until interrupted."""
    from prefect import serve as prefect_serve

    _needs_server("serving")  # a temporary server's runs are cancelled: no one else can reach it to trigger them
    prefect_serve(*runner_deployments(overrides, cron))


def _needs_server(what: str) -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError(f"{what} needs a Prefect server: start one (prefect server start) and set "
                         "PREFECT_API_URL to it (e.g. http://127.0.0.1:4200/api)")
