"""The deployments in deployments/prefect.yaml load as a worker would load them, and the train flow
they schedule runs (on synthetic data with tiny encoders) and publishes its metrics."""

import pytest
from prefect.flows import load_flow_from_entrypoint

from mmsa.flows.serve import PREFECT_YAML, load_deployments, runner_deployments

ROOT = PREFECT_YAML.parent.parent
DEPLOYMENTS = load_deployments()


def latest_artifact(key: str) -> str:
    """The markdown of the newest artifact with `key`, read back from the Prefect API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.get(f"{PREFECT_API_URL.value()}/artifacts/{key}/latest")
    response.raise_for_status()
    return response.json()["data"]


def test_yaml_defines_nightly_backfill_and_train_on_one_work_pool():
    """The three deployments exist, share the process work pool, and the nightly one has a valid cron and timezone."""
    from prefect.client.schemas.schedules import CronSchedule

    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert sorted(by_name) == ["backfill", "nightly", "train"]
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS} == {"mmsa-process"}
    (schedule,) = by_name["nightly"]["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.timezone == by_name["nightly"]["parameters"]["timezone"] == "Europe/Berlin"
    assert "{date}" in by_name["nightly"]["parameters"]["dump_template"]


@pytest.mark.parametrize("spec", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_validate(spec):
    """Every entrypoint loads from the repo root and the yaml's parameters fit its flow's signature."""
    flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
    validated = flow.validate_parameters(spec["parameters"])
    assert set(spec["parameters"]) <= set(validated)
    with pytest.raises(Exception, match="shard_sise|Function expects"):
        flow.validate_parameters({**spec["parameters"], "shard_sise": 8})


def test_serve_builds_the_yaml_deployments_with_local_paths():
    """`mmsa serve` overrides where the scoring flows read and write, never the train flow's model folder."""
    built = {d.name: d for d in runner_deployments({"dump_template": "/x/{date}.csv", "db": "/x/m.duckdb", "out": "/x/o",
                                                    "timezone": None}, cron="0 5 * * *")}
    assert sorted(built) == ["backfill", "nightly", "train"]
    assert built["nightly"].parameters["dump_template"] == "/x/{date}.csv"
    assert built["nightly"].parameters["timezone"] == "Europe/Berlin"
    assert built["nightly"].schedules[0].schedule.cron == "0 5 * * *"
    assert built["backfill"].parameters["out"] == "/x/o" and not built["backfill"].schedules
    assert built["train"].parameters["out"] == "/data/mmsa/models/candidate"
    assert all(d.work_pool_name is None for d in built.values())
    for_worker = runner_deployments({}, for_worker=True)
    assert {d.work_pool_name for d in for_worker} == {"mmsa-process"}
    assert for_worker[0].job_variables["env"]["HF_HUB_OFFLINE"] == "1"


def test_train_flow_trains_evaluates_and_publishes_metrics(prefect_harness, tmp_path):
    """The train deployment's flow on synthetic posts with tiny random encoders: a model folder and a metrics artifact."""
    from mmsa.flows.train import train_flow
    from synthetic import tiny_text_encoder, tiny_vit, write_dataset

    data = write_dataset(tmp_path / "data", n_train=48, n_dev=24)
    rows = train_flow(data=str(data), out=str(tmp_path / "model"), text_encoder=str(tiny_text_encoder(tmp_path / "bert")),
                      image_encoder=f"hf:{tiny_vit(tmp_path / 'vit')}", epochs=2, eval_data=str(data / "dev.jsonl"))
    assert (tmp_path / "model" / "config.json").exists()
    assert rows["dev"]["n"] == rows["eval"]["n"] == 24
    assert 0 <= rows["eval"]["accuracy"] <= 1
    markdown = latest_artifact("train-metrics")
    assert "| eval | 24 |" in markdown and "| dev | 24 |" in markdown
