"""What the benchmark commands do: ``bench``, ``results``, ``plot``."""

from __future__ import annotations

import contextlib
import signal
import sys

from ..bench.config import load_config
from ..bench.jobs import expand
from ..bench.plots import plot_all
from ..bench.report import format_table, summarize
from ..bench.rows import write_csv
from ..bench.runner import BenchInterrupted, run
from ..bench.store import ResultStore
from ..files import open_for_writing


def cmd_bench(args) -> int:
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
    rows = _rows(args)
    if args.csv:
        if args.output:
            with open_for_writing(args.output, newline="") as f:  # never through a link or onto a folder
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
    for path in plot_all(_rows(args), args.out):
        print(path)
    return 0


def _rows(args) -> list:
    """The database's rows, or with ``--config`` only those of that configuration's jobs."""
    keys = None
    if args.config:
        keys = {job.key for job in expand(load_config(args.config))}
    with ResultStore.open_read(args.db) as store:  # read-only: never creates, migrates or writes
        return store.rows(keys)


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
