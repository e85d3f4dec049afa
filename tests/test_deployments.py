"""The deployments in deployments/prefect.yaml load as a worker would load them, and the train flow
they schedule builds the shipped recipe (on synthetic data with tiny encoders) and publishes its figures."""

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
                                                    "timezone": None, "model": "large"}, cron="0 5 * * *")}
    assert sorted(built) == ["backfill", "nightly", "train"]
    assert built["nightly"].parameters["dump_template"] == "/x/{date}.csv"
    assert built["nightly"].parameters["timezone"] == "Europe/Berlin"
    assert built["nightly"].schedules[0].schedule.cron == "0 5 * * *"
    assert built["backfill"].parameters["out"] == "/x/o" and not built["backfill"].schedules
    assert built["train"].parameters["out"] == "/data/mmsa/models/candidate"
    assert built["nightly"].parameters["model"] == built["backfill"].parameters["model"] == "large"
    assert "model" not in built["train"].parameters
    assert all(d.work_pool_name is None for d in built.values())
    for_worker = runner_deployments({}, for_worker=True)
    assert {d.work_pool_name for d in for_worker} == {"mmsa-process"}
    assert for_worker[0].job_variables["env"]["HF_HUB_OFFLINE"] == "1"


def test_the_train_flow_and_deployment_take_the_recipe_functions_parameters_and_defaults():
    """The flow is a thin wrapper of mmsa.recipe.train_default, the function `mmsa train` calls: every parameter
    but `eval_data` is one of that function's, each defaulting to None (the function's own default), so neither
    the flow nor the deployment can pick a different model; the deployment sets only where data and model lie."""
    import inspect

    from mmsa import recipe
    from mmsa.flows.train import train_flow

    built = inspect.signature(recipe.train_default).parameters
    flow_params = inspect.signature(train_flow.fn).parameters
    assert set(flow_params) - {"eval_data"} <= set(built)
    assert [n for n, p in flow_params.items() if p.default is not None] == ["out"]  # required, as in train_default
    (spec,) = [d for d in DEPLOYMENTS if d["name"] == "train"]
    assert set(spec["parameters"]) == {"out", "mvsa", "semeval", "targeted"}
    assert built["recipe"].default == "stack2" and built["targeted"].default is None  # the target head by default


@pytest.fixture
def one_thread():
    """One torch thread, as `mmsa train --threads` defaults to: on a shared 2-core machine more threads make the
    target head's small steps many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_flow_builds_the_shipped_recipe_and_publishes_its_figures(prefect_harness, tmp_path, one_thread):
    """The train deployment's flow on synthetic posts and targeted rows with tiny random encoders: the stacked
    heads of the shipped recipe, then the target head, in one model folder that loads; figures as an artifact."""
    import json

    from mmsa import stack
    from mmsa.flows.train import train_flow
    from mmsa.model import load_model
    from mmsa.train import TrainConfig, run
    from synthetic import tiny_text_encoder, tiny_vit, write_dataset, write_targeted

    data = write_dataset(tmp_path / "data", n_train=120, n_dev=40)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    tweets = tmp_path / "tweets.jsonl"
    tweets.write_text("".join(json.dumps({"text": r["text"], "label": r["text_label"]}) + "\n" for r in rows * 2))
    base = TrainConfig(head="text", text_encoder=str(tiny_text_encoder(tmp_path / "bert", layers=4, intermediate=96)),
                       image_encoder=f"hf:{tiny_vit(tmp_path / 'vit')}", epochs=1, hidden=16, folds=3, members=1)
    run(base, data, tmp_path / "base", cache_dir=tmp_path / "cache", progress=False)

    out = tmp_path / "model"
    got = train_flow(out=str(out), mvsa=str(data), semeval=str(tweets), targeted=str(write_targeted(tmp_path / "targeted")),
                     base=str(tmp_path / "base"), cache_dir=str(tmp_path / "cache"), eval_data=str(data / "dev.jsonl"))
    config = json.loads((out / "config.json").read_text())
    assert config["head"] == "stack" and config["head_kwargs"]["branches"] == list(stack.RECIPES[stack.DEFAULT_RECIPE])
    assert config["train_config"]["class_weight"] == stack.DEFAULT_WEIGHT
    assert config["target_head"] == "target_head.safetensors" and config["target_train"]["rows"] == 9 * 40
    assert load_model(out).target_head is not None
    assert got["mvsa (out of fold)"]["n"] == 160 and got["eval"]["n"] == 40
    markdown = latest_artifact("train-metrics")
    assert "| eval | 40 |" in markdown and "| target twitter2015 (out of fold) | 80 |" in markdown


def test_register_without_the_work_pool_says_how_to_create_it_then_registers(prefect_harness):
    """`mmsa serve --register` on a server that lacks the yaml's pool: one line naming the command that creates
    it; once it exists, every deployment is registered."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from mmsa.flows import serve

    with pytest.raises(ValueError, match=r'Work pool "mmsa-process" not found\. Create it first: prefect work-pool '
                                         r"create mmsa-process --type process"):
        serve.register({})
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="mmsa-process", type="process"))
    names = sorted(line.split(":")[0] for line in serve.register({}))
    assert names == sorted(f"{d.flow_name}/{d.name}" for d in runner_deployments({}, for_worker=True)), names
    assert [n.split("/")[1] for n in names] == ["backfill", "nightly", "train"]


def test_serving_or_registering_without_a_server_is_one_line(tmp_path, capsys, monkeypatch):
    """`mmsa serve` without PREFECT_API_URL said its deployments were served, and every run triggered from
    elsewhere was cancelled: nothing can reach a temporary server. Both ways now say what to start."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mmsa.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # a session's harness may have set one
        for extra in ([], ["--register"]):
            assert main(["serve", "--db", str(tmp_path / "m.duckdb"), *extra]) == 2
            assert "needs a Prefect server: start one (prefect server start)" in capsys.readouterr().err
