"""The ``bench``, ``results`` and ``plot`` subcommands.

``bnnmip/cli.py`` adds them with ``register(subparsers)``; ``python -m bnnmip.bench`` (or
``python -m bnnmip.bench.cli``) runs them on their own::

    bnnmip bench benchmarks/configs/smoke.toml [--db PATH] [--workers N | --scheduler tcp://HOST:PORT]
    bnnmip results smoke.sqlite                 # flip rate per dataset / arch / ε / method
    bnnmip results smoke.sqlite --csv -o smoke.csv
    bnnmip plot smoke.sqlite -o plots/
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path


def cmd_bench(args) -> int:
    from .runner import BenchInterrupted, run

    with _sigterm_as_interrupt():
        try:
            summary = run(args.config, db=args.db, workers=args.workers, scheduler=args.scheduler,
                          progress=not args.no_progress, retry_errors=args.retry_errors)
        except BenchInterrupted as e:
            print(e.summary, file=sys.stderr)
            print("bnnmip: interrupted; every finished job is in the database", file=sys.stderr)
            return 130
    print(summary)
    return 0


def cmd_results(args) -> int:
    from .report import format_table, summarize
    from .store import write_csv

    rows = _rows(args)
    if args.csv:
        if args.output:
            with open(args.output, "w", newline="") as f:
                write_csv(rows, f)
            print(f"wrote {len(rows)} rows to {args.output}")
        else:
            write_csv(rows, sys.stdout)
        return 0
    if args.output:
        print("bnnmip: error: -o/--output needs --csv", file=sys.stderr)
        return 2
    print(f"{args.db}: {len(rows)} jobs")
    print(format_table(summarize(rows)))
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_all

    for path in plot_all(_rows(args), args.out):
        print(path)
    return 0


def _rows(args) -> list:
    """The database's rows, or with ``--config`` only those of that configuration's jobs."""
    from .store import ResultStore

    keys = None
    if args.config:
        from .config import load_config
        from .jobs import expand

        keys = {job.key for job in expand(load_config(args.config))}
    with ResultStore(args.db, create=False) as store:
        return store.rows(keys)


_CONFIG_HELP = ("only the jobs of this configuration (TOML), for a database that holds several: "
                "one store computes a job shared by two configurations once")


def register(subparsers) -> None:
    """Add ``bench``, ``results`` and ``plot`` to an argparse ``add_subparsers()`` object."""
    p = subparsers.add_parser("bench", help="run a benchmark configuration (resumable, on Dask)",
                              description="Run every job of a TOML benchmark configuration that the results "
                                          "database does not hold yet.")
    p.add_argument("config", help="benchmark configuration (TOML), e.g. benchmarks/configs/smoke.toml")
    p.add_argument("--db", help="SQLite results database (default: the config's db, else <name>.sqlite here)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="local worker processes (default: cores // threads per job)")
    group.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--retry-errors", action="store_true",
                   help="run again the jobs recorded with status 'error' (default: they count as finished)")
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("results", help="summarise or export a benchmark's results database")
    p.add_argument("db", help="SQLite results database")
    p.add_argument("--csv", action="store_true", help="export every row as CSV")
    p.add_argument("-o", "--output", help="CSV file to write (default: stdout)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_results)

    p = subparsers.add_parser("plot", help="draw a benchmark's figures (PNG and SVG)")
    p.add_argument("db", help="SQLite results database")
    p.add_argument("-o", "--out", type=Path, default=Path("plots"), help="output folder (default: plots)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_plot)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (e.g. from a batch scheduler) like Ctrl-C while a benchmark runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the three subcommands (same error handling as ``bnnmip``)."""
    parser = argparse.ArgumentParser(prog="python -m bnnmip.bench", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True))
    from ..cli import run_parser

    return run_parser(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
