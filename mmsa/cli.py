"""The `mmsa` command line. Each subcommand is a thin shell over one library module.

Heavy imports (torch, prefect) happen inside the command that needs them so that
`mmsa --help` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_score(args: argparse.Namespace) -> int:
    from flows.score import score_flow

    summary = score_flow(
        dump=args.dump,
        db=args.db,
        out=args.out,
        cache=args.cache,
        model=args.model,
        shard_size=args.shard_size,
        allow_local_files=args.allow_local_files,
        allow_hosts=args.allow_hosts,
        force=args.force,
        retry_failed=args.retry_failed,
    )
    print(summary.describe())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mmsa import report

    if args.list or not args.name:
        for name, doc in report.list_reports():
            print(f"{name:32s} {doc}")
        return 0
    table = report.run_report(args.name, args.db)
    print(report.format_table(table))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmsa import demo

    demo.run(workdir=args.workdir, n_posts=args.posts)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score a post dump into Parquet + DuckDB (Prefect flow)")
    p.add_argument("dump", help="JSONL/CSV/Parquet file, local path or http(s) URL")
    p.add_argument("--db", required=True, help="DuckDB database file to write")
    p.add_argument("--out", required=True, help="folder for hive-partitioned Parquet results")
    p.add_argument("--cache", help="image cache folder (default: OUT/_cache)")
    p.add_argument("--model", default="default", help="model name or folder (default: shipped model)")
    p.add_argument("--shard-size", type=int, default=256, help="posts per shard (unit of work and resume)")
    p.add_argument(
        "--allow-local-files",
        action="store_true",
        help="accept image_url values that are local file paths (off by default: dumps are untrusted)",
    )
    p.add_argument(
        "--allow-hosts",
        nargs="*",
        default=[],
        metavar="HOST_OR_CIDR",
        help="hosts or CIDRs exempt from the private-address block (tests, private CDNs)",
    )
    p.add_argument("--force", action="store_true", help="re-score shards already scored by this model")
    p.add_argument("--retry-failed", action="store_true", help="re-fetch retryable image failures and re-score their shards")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("report", help="run one SQL report from sql/reports and print it")
    p.add_argument("name", nargs="?", help="report name (file name without .sql)")
    p.add_argument("--db", help="DuckDB database file")
    p.add_argument("--list", action="store_true", help="list the reports")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="generate a small dump with images, serve it on 127.0.0.1, score it, report")
    p.add_argument("--workdir", default="demo_output", help="where the demo writes its dump, Parquet and DuckDB")
    p.add_argument("--posts", type=int, default=48, help="number of demo posts")
    p.set_defaults(func=_cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mmsa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
