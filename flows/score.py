"""Prefect wiring for nightly scoring: one task per stage and per shard, over mmsa.pipeline.

Tasks exchange file paths and small summaries only, so a shard can be scored in another thread
(default: fetching of later shards overlaps the model run on earlier ones) or on a Dask worker
(`make_task_runner("dask", ...)`; each worker loads the model once and keeps it).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from mmsa import faults, pipeline
from mmsa.options import RUNNERS, RunParameters
from mmsa.store import now_utc, run_lock


def make_task_runner(runner: str = "threads", dask_address: str | None = None, dask_workers: int = 2):
    """The task runner for `score_flow.with_options(task_runner=...)`.

    threads: shards in two threads of this process. dask: shards on the Dask cluster at
    `dask_address` (tcp://host:8786), or on a temporary local cluster of `dask_workers` processes."""
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=2)
    if runner != "dask":
        raise ValueError(f"unknown runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True},
    )


def _retryable(task, task_run, state) -> bool:
    """Retry what a retry can fix (network, S3 throttling, a server's 5xx), not a missing or unreadable dump, a
    full disk, a denied or read-only path, a locked database or a damaged model (mmsa.faults)."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, (FileNotFoundError, ValueError)) or faults.is_permanent(exc))


@task(name="prepare-dump", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retryable)
def prepare_task(dump: str, opts: pipeline.RunOptions) -> pipeline.Prepared:
    return pipeline.prepare(dump, opts)


@task(name="score-shard", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_retryable)
def score_shard_task(shard: str, opts: pipeline.RunOptions, run_id: str, key: str) -> pipeline.ShardResult:
    return pipeline.score_shard(shard, opts, run_id, key)


@task(name="load-duckdb")
def load_task(prepared, results, opts, run_id, model_version, started_at, stage_seconds) -> pipeline.RunSummary:
    return pipeline.load(prepared, results, opts, run_id, model_version, started_at, stage_seconds)


@flow(name="score-posts", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def score_flow(dump: str, params: RunParameters, progress: bool = False) -> pipeline.RunSummary:
    """Score one post dump (a file, folder or glob of files) into Parquet partitions under `params.out` and
    the DuckDB file `params.db` (mmsa.options.RunParameters says what else a run is told).

    The whole run holds `<db>.lock`: a second run against the same database is refused."""
    from mmsa.model import load_model

    opts = pipeline.RunOptions.build(params)
    db, out, model = params.db, params.out, params.model
    with run_lock(db):
        run_id, started_at = pipeline.new_run_id(), now_utc()
        t0 = started_at.timestamp()
        prepared = prepare_task(dump, opts)
        stage_seconds = {"read": now_utc().timestamp() - t0}
        model_version = load_model(model).version
        futures = [score_shard_task.submit(shard, opts, run_id, prepared.key) for shard in prepared.shards]
        results = _shard_results(futures, progress, out)
        try:
            summary = load_task(prepared, results, opts, run_id, model_version, started_at, stage_seconds)
        except Exception as exc:
            permanent = faults.as_permanent(exc, db)
            if permanent is None or isinstance(exc, pipeline.NotPublished):  # stored: no shards wait for a load
                raise
            raise faults.PermanentError(f"{permanent}; the {len(results)} scored shards are kept and the next run "
                                        "loads them") from exc
    create_markdown_artifact(key="score-run", markdown=summary.markdown(), description=f"mmsa scoring of {dump}")
    headline_task(db, run_id, out)
    print(summary.describe())
    return summary


def _shard_results(futures: list, progress: bool, out: str) -> list[pipeline.ShardResult]:
    """The shards' results, in order. Waits for them as they finish, so that a permanent failure (mmsa.faults) ends
    the run at once, saying how many shards are kept for the rerun; any other failure is raised as it is."""
    finished = as_completed(futures)
    if progress:
        from tqdm import tqdm

        finished = tqdm(finished, total=len(futures), desc="shards", unit="shard")
    for future in finished:
        try:
            future.result()
        except Exception as exc:
            permanent = faults.as_permanent(exc, out)
            if permanent is None:
                raise
            kept = sum(f.state.is_completed() for f in futures)
            raise faults.PermanentError(f"{permanent}; {kept} of {len(futures)} shards are kept") from exc
    return [f.result() for f in futures]


@task(name="headline")
def headline_task(db: str, run_id: str, out: str) -> list[str]:
    """Publish the analysts' headline (from the snapshot the load just published) with its charts."""
    import shutil
    import tempfile

    from mmsa import charts, publish, storage

    remote = storage.is_remote(out)  # charts drawn in a local folder, then uploaded beside the Parquet
    folder = Path(tempfile.mkdtemp(prefix="mmsa-charts-")) if remote else Path(out) / "_reports" / run_id
    try:
        headline = charts.headline(publish.snapshot_path(db), folder, run_id=run_id)
        paths = [str(path) for path in headline.charts]
        if remote:
            target = storage.path(out) / "_reports" / run_id
            for path in headline.charts:
                storage.upload(path, target / Path(path).name)
            paths = [str(target / Path(path).name) for path in headline.charts]
    finally:
        if remote:
            shutil.rmtree(folder, ignore_errors=True)
    links = "\n".join(f"- chart: `{path}`" for path in paths)
    create_markdown_artifact(key="headline", markdown=f"{headline.markdown}\n{links}\n", description="mmsa nightly headline")
    return paths
