"""Run parameters are defined once (mmsa.options.RunParameters): the flows take them whole or, where a deployment
gives them flat (backfill_flow), under the same names with the same defaults, and RunOptions.build carries every
one of them to the stages. A field added to RunParameters and forgotten elsewhere fails here."""

import dataclasses
import inspect

from mmsa.flows.backfill import backfill_flow
from mmsa.flows.score import score_flow
from mmsa.options import RunParameters, parameter_names
from mmsa.pipeline import RunOptions


def test_the_backfill_flow_takes_every_run_parameter_with_its_default():
    signature = inspect.signature(backfill_flow.fn).parameters
    missing = [name for name in parameter_names() if name not in signature]
    assert not missing, f"backfill_flow lacks run parameters {missing}"
    for field in dataclasses.fields(RunParameters):
        argument = signature[field.name]
        expected = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        assert argument.default == expected, f"{field.name}: default {argument.default!r}, RunParameters {expected!r}"
        assert argument.annotation == field.type, f"{field.name}: {argument.annotation} against {field.type}"


def test_the_score_flow_takes_the_run_parameters_whole():
    assert inspect.signature(score_flow.fn).parameters["params"].annotation in (RunParameters, "RunParameters")


def test_run_options_carry_every_run_parameter(tmp_path, monkeypatch):
    """Each parameter set to a value other than its default arrives in RunOptions (or its reading and fetch
    settings); the table below names every field, so a new one must be carried and listed."""
    brands = tmp_path / "brands.yaml"
    brands.write_text("acme:\n  keywords: [acme]\n")
    params = RunParameters(db="d.duckdb", out="out", cache="cache", model="mine", shard_size=7, allow_local_files=True,
                           allow_hosts=["10.0.0.1"], force=True, retry_failed=True, backend="torch", source_format="flat",
                           mapping={"text": "body"}, brands=str(brands), max_images=2, fetch_processes=3, gpu_decode=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")  # a model folder: a folder named like a model is not one
    (tmp_path / "default").mkdir()
    opts = RunOptions.build(params)
    # local folders absolute: Dask workers started elsewhere read and write them too (a relative --out failed there)
    carried = {
        "db": opts.db == "d.duckdb", "out": opts.out == str(tmp_path / "out"), "cache": opts.cache == str(tmp_path / "cache"),
        "model": opts.model == str(tmp_path / "mine"),
        "shard_size": opts.shard_size == 7, "allow_local_files": opts.allow_local_files is True,
        "allow_hosts": opts.allow_hosts == ("10.0.0.1",), "force": opts.force is True,
        "retry_failed": opts.retry_failed is True, "backend": opts.backend == "torch",
        "source_format": opts.reading.source_format == "flat", "mapping": opts.reading.mapping == {"text": "body"},
        "brands": list(opts.reading.brand_rules or {}) == ["acme"], "max_images": opts.reading.max_images == 2,
        "fetch_processes": opts.fetch.processes == 3, "gpu_decode": opts.fetch.gpu_decode is True,
    }
    assert sorted(carried) == sorted(parameter_names()), "a run parameter with no row here: carry it and list it"
    assert [name for name, ok in carried.items() if not ok] == []
    remote = RunOptions.build(RunParameters(db="d.duckdb", out="s3://bucket/out", cache="file:///srv/cache"))
    assert (remote.out, remote.cache, remote.model) == ("s3://bucket/out", "/srv/cache", "default")
