"""Prefect wiring for a range of days: one `score-posts` subflow per day's dump.

The day's dump location comes from a template (`/data/dumps/{date}.jsonl`, or an URL;
`{date:%Y/%m/%d}` works too). A day whose dump was already scored to the end by the same model
version (a finished row in `runs`; for a local file, of the same bytes: a dump replaced since by a later or
whole one is scored again) is skipped, unless `force`. With no dates, it scores the day before the run's scheduled start, in
`timezone`: that is the nightly deployment (a late or missed night's run scores its own day).
"""

from __future__ import annotations

import string
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.runtime import flow_run

from mmsa import faults, publish, source, storage
from mmsa.flows.score import make_task_runner, score_flow
from mmsa.options import DEFAULT_MAX_IMAGES, RunParameters, parameter_names
from mmsa.pipeline import RunOptions
from mmsa.store import already_scored, run_lock


def day_before(scheduled: datetime | None, timezone: str) -> date:
    """The day before the run's scheduled start (None: now) in `timezone`: a nightly run that starts late, or a
    missed one run the next morning, scores its own night's day, not today's yesterday twice."""
    return (scheduled or datetime.now(ZoneInfo("UTC"))).astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def day_range(start: date | None, end: date | None, yesterday: date) -> tuple[date, date]:
    """The first and last day: with neither, yesterday; a start alone runs to yesterday (catching up after
    downtime); an end alone is that day."""
    return start or end or yesterday, end or yesterday


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def day_dump(template: str, day: date) -> str:
    """The day's dump location from the template; a ValueError naming the template when it is not one (also
    one without {date}: every day would read the same dump, and all but the first be skipped as done)."""
    example = "its one field is {date}, e.g. /data/dumps/{date}.jsonl or {date:%Y/%m/%d}.jsonl"
    try:
        fields = {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        if "date" in fields:
            return template.format(date=day)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise ValueError(f"dump template {template!r} cannot be filled ({type(exc).__name__}: {exc}): {example}") from None
    raise ValueError(f"dump template {template!r} has no {{date}} field: {example}")


@flow(name="backfill-posts", log_prints=True)
def backfill_flow(
    dump_template: str,
    db: str,
    out: str,
    start: date | None = None,
    end: date | None = None,
    timezone: str = "UTC",
    model: str = "default",
    shard_size: int | None = None,
    cache: str | None = None,
    allow_local_files: bool = False,
    allow_hosts: list[str] | None = None,
    force: bool = False,
    retry_failed: bool = False,
    backend: str | None = None,
    runner: str = "threads",
    dask_address: str | None = None,
    source_format: str | None = None,
    mapping: dict[str, str] | None = None,
    brands: str | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    fetch_processes: int | None = None,
    gpu_decode: bool = False,
) -> dict[str, str]:
    """Score the dump of every day from `start` to `end` (inclusive; `day_range`: with neither, the day before
    the run's scheduled start in `timezone`).
    The run parameters are mmsa.options.RunParameters', flat here as a deployment gives them.

    Returns {day: "scored" | "skipped"}; fails after trying every day if any day failed, or at once on a day's
    permanent failure (mmsa.faults)."""
    from mmsa.model import load_model

    given = locals()
    # Every run parameter is an argument above (tests/test_options.py checks names and defaults): none is dropped.
    params = RunParameters(**{name: given[name] for name in parameter_names()})
    # a bad option (a database in a bucket) said before the lock and the first day; how the days are read, once
    reading = source.reading_key(RunOptions.build(params).reading)

    days = days_between(*day_range(start, end, day_before(flow_run.scheduled_start_time, timezone)))
    day_dump(dump_template, days[0])
    scorer = score_flow.with_options(task_runner=make_task_runner(runner, dask_address))
    model_version = load_model(model).version
    with run_lock(db):  # the whole range: a second backfill is refused, not let in between two days
        outcome, failed = _days(days, dump_template, db, model_version, scorer, params, reading, force or retry_failed)
        publish.publish_if_behind(db)
    print(", ".join(f"{d}: {o}" for d, o in outcome.items()))
    if failed:
        raise BackfillFailed(f"{len(failed)} of {len(days)} days failed: {'; '.join(failed)}", outcome)
    return outcome


def _days(days: list[date], dump_template: str, db: str, model_version: str, scorer, params: RunParameters,
          reading: str, again: bool) -> tuple[dict[str, str], list[str]]:
    """Score each day's dump in turn (`reading`: mmsa.source.reading_key of how they are read): ({day: "scored" |
    "skipped" | "failed"}, the failed days with why)."""
    outcome, failed = {}, []
    for day in days:
        dump = day_dump(dump_template, day)
        key, missing = None, None
        if not source.is_url(dump) and not storage.is_remote(dump):  # a local day: its bytes, or not there
            try:
                key = source.files_key(source.resolve(dump, Path(), warn=False))  # the day's run names odd files
            except FileNotFoundError as exc:
                missing = exc
        if not again and already_scored(db, dump, model_version, key, reading):
            outcome[str(day)] = "skipped"
            print(f"{day}: {dump} already scored by {model_version}, skipped")
            continue
        if missing is not None:  # said without a run
            outcome[str(day)] = "failed"
            failed.append(f"{day} ({missing})")
            print(f"{day}: {missing}")
            continue
        state = scorer.with_options(flow_run_name=f"score-{day}")(dump=dump, params=params, return_state=True)
        outcome[str(day)] = "scored" if state.is_completed() else "failed"
        if not state.is_completed():
            permanent = faults.as_permanent(state.result(raise_on_failure=False))
            if permanent is not None:  # the days after it would meet the same disk, folder or database
                raise faults.PermanentError(f"{day}: {permanent}; {len(outcome) - 1} of {len(days)} days are done")
            failed.append(f"{day} ({state.message})")
    return outcome, failed


class BackfillFailed(faults.Told):
    """Some days failed (the flow run fails, for alerting); `outcome` is every day's, for the command's table."""

    def __init__(self, message: str, outcome: dict[str, str]):
        super().__init__(message)
        self.outcome = outcome
