"""The parameters of a scoring run, defined once: `mmsa score` and `mmsa backfill` build their shared
argument group from them (mmsa.cli), the score and backfill flows take and forward them as one value,
and mmsa.pipeline.RunOptions.build turns them into what the stages use.

Plain values only (what a deployment's JSON or a command line holds), and nothing imported beyond the
standard library, so that `mmsa --help` stays fast.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields

BACKENDS = ("torch", "onnx", "int8", "onnx-int8")  # mmsa.infer's inference backends
RUNNERS = ("threads", "dask")  # where shards are scored: threads of this process, or Dask workers
DEFAULT_MAX_IMAGES = 4  # images kept per post, in the post's order
DEFAULT_SHARD_SIZE = 512  # posts per shard: fewer per-shard costs than 256, still two shards in flight on 2 cores


@dataclass
class RunParameters:
    """What a scoring run is told, besides the dump."""

    db: str  # the pipeline's DuckDB file
    out: str  # folder of the hive-partitioned Parquet results
    cache: str | None = None  # image cache (default OUT/_cache)
    model: str = "default"  # model name or folder
    shard_size: int | None = None  # None: the size an earlier run cut the dump at, else DEFAULT_SHARD_SIZE
    allow_local_files: bool = False  # accept local image paths (a dump is untrusted input)
    allow_hosts: list[str] | None = None  # hosts or CIDRs exempt from the private-address block
    force: bool = False  # re-score shards already scored by this model
    retry_failed: bool = False  # re-fetch retryable image failures and re-score their shards
    backend: str | None = None  # one of BACKENDS; None: $MMSA_BACKEND, else onnx on CPU, torch on GPU
    source_format: str | None = None  # a mmsa.readers name; None: each record's shape decides
    mapping: dict[str, str] | None = None  # {flat field: path in the record}
    brands: str | None = None  # brand rules file (mmsa.brands)
    max_images: int = DEFAULT_MAX_IMAGES
    # Image worker processes (mmsa.images.processes): 0 = threads of one process; None = one per core on machines of
    # more than 2 cores, else threads.
    fetch_processes: int | None = None
    gpu_decode: bool = False  # JPEGs decoded on the GPU in batches where one is present (mmsa.images.gpudecode)


def parameter_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(RunParameters))


@functools.cache
def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which honours taskset/cgroup cpusets): what the defaults
    that depend on the machine divide (fetch worker processes and decode slots, inference threads). Read once."""
    return len(os.sched_getaffinity(0))
