"""Prefect wiring for nightly scoring: one task per stage and per shard, over mmsa.pipeline.

Tasks exchange file paths and small summaries only. Fetching of later shards overlaps the
model run on earlier ones through the thread task runner.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from mmsa import pipeline
from mmsa.store import now_utc


@task(name="prepare-dump", retries=2, retry_delay_seconds=[5, 30])
def prepare_task(dump: str, opts: pipeline.RunOptions) -> pipeline.Prepared:
    return pipeline.prepare(dump, opts)


@task(name="score-shard", retries=1, retry_delay_seconds=10)
def score_shard_task(shard: str, opts: pipeline.RunOptions, run_id: str, key: str) -> pipeline.ShardResult:
    return pipeline.score_shard(shard, opts, run_id, key)


@task(name="load-duckdb")
def load_task(prepared, results, opts, run_id, model_version, started_at, stage_seconds) -> pipeline.RunSummary:
    return pipeline.load(prepared, results, opts, run_id, model_version, started_at, stage_seconds)


@flow(name="score-posts", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def score_flow(
    dump: str,
    db: str,
    out: str,
    cache: str | None = None,
    model: str = "default",
    shard_size: int = 256,
    allow_local_files: bool = False,
    allow_hosts: list[str] | None = None,
    force: bool = False,
    retry_failed: bool = False,
) -> pipeline.RunSummary:
    """Score one post dump into Parquet partitions under `out` and the DuckDB file `db`."""
    from mmsa.model import load_model

    opts = pipeline.RunOptions(
        db=db, out=out, cache=cache, model=model, shard_size=shard_size, allow_local_files=allow_local_files,
        allow_hosts=tuple(allow_hosts or ()), force=force, retry_failed=retry_failed,
    )
    run_id, started_at = pipeline.new_run_id(), now_utc()
    t0 = started_at.timestamp()
    prepared = prepare_task(dump, opts)
    stage_seconds = {"read": now_utc().timestamp() - t0}
    model_version = load_model(model).version
    futures = [score_shard_task.submit(shard, opts, run_id, prepared.key) for shard in prepared.shards]
    results = [f.result() for f in futures]
    summary = load_task(prepared, results, opts, run_id, model_version, started_at, stage_seconds)
    print(summary.describe())
    return summary
