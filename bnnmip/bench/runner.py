"""Running a benchmark on Dask: :func:`run`.

The coordinating process expands the configuration into jobs, drops those already in the results
store, and hands the rest to :class:`~.drive.Drive`, which claims them in the store a window at a
time, submits them to a Dask cluster (a ``LocalCluster`` of single-threaded worker processes, or an
existing scheduler) and records each result as it arrives.  Workers only compute; coordinators
alone write the database, one transaction per job.  Two coordinators on one database split the
jobs through their claims; a result the database refuses is kept (memory and a side journal) and
recorded when it takes writes again, or by the next run (:mod:`~.backlog`).

Cores: each worker runs one job at a time (``threads_per_worker=1``) and each job's solver gets
``threads`` threads, so ``workers × threads`` should not exceed the cores (the default number of
workers is ``cores // threads``; more than :data:`WORKERS_PER_CORE` per core, or more than the
process's open-file limit allows, is refused).  With ``--scheduler``, size the cluster's workers
the same way.

Ctrl-C (or SIGTERM from the CLI) cancels the outstanding jobs and closes the cluster; every result
received so far is in the database, and rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError, StoreError
from .backlog import recover_journals
from .config import BenchConfig, load_config
from .drive import Drive
from .jobs import expand
from .report import STATUS_ORDER, Tally
from .store import ResultStore, StoreUnavailable

WORKERS_PER_CORE = 4
"""Local worker processes per core at most: more only slows every job down."""
_FDS_PER_WORKER = 16  # pipes, sockets and files of one worker process, seen from the coordinator
_SCHEMES = {"tcp", "tls", "ws", "wss", "ucx"}  # the transports of a remote Dask scheduler


@dataclass(frozen=True)
class BenchSummary:
    """What a call of :func:`run` did."""

    name: str
    db: Path
    jobs: int  # jobs in the configuration
    skipped: int  # already in the database before this run
    ran: int  # recorded by this run
    cancelled: int  # not recorded by anyone (interrupted, the cluster went away, the store unusable)
    statuses: tuple[tuple[str, int], ...]  # over all the configuration's recorded jobs
    flip_rates: tuple[tuple[str, int, int], ...]  # (method variant, flipped, attacked)
    elapsed: float  # seconds, the whole call
    job_seconds: float  # seconds from the first submission to the last recorded result
    cluster: str
    interrupted: bool = False
    by_others: int = 0  # recorded meanwhile by another run on the same database
    unrecorded: int = 0  # computed by this run but not in the database (kept in the side journal)

    @property
    def complete(self) -> bool:
        return self.skipped + self.ran + self.by_others == self.jobs

    @property
    def jobs_per_hour(self) -> float | None:
        """Throughput of this run (recorded jobs per hour of job time)."""
        return 3600.0 * self.ran / self.job_seconds if self.ran and self.job_seconds > 0 else None

    def __str__(self) -> str:
        state = "interrupted" if self.interrupted else ("complete" if self.complete else "incomplete")
        if self.ran or self.cancelled or self.by_others:
            this_run = (f"{self.ran} jobs in {self.elapsed:.1f} s on {self.cluster}"
                        + (f" ({self.jobs_per_hour:,.0f} jobs/hour)" if self.jobs_per_hour else "")
                        + (f"; {self.skipped} already done" if self.skipped else "")
                        + (f"; {self.by_others} recorded by another run" if self.by_others else ""))
        else:
            this_run = "nothing to run: every job is in the database"
        lines = [
            f"benchmark  {self.name}: {state}, {self.jobs - self.cancelled}/{self.jobs} jobs in {self.db}",
            f"this run   {this_run}",
            "statuses   " + ", ".join(f"{s} {n}" for s, n in self.statuses),
        ]
        lines += [f"flip rate  {v}: {f}/{n} = {100 * f / n:.1f}%" for v, f, n in self.flip_rates if n]
        if not self.complete:
            lines.append("resume     rerun the same command: finished jobs are skipped")
        return "\n".join(lines)


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the CLI) stopped :func:`run`; ``summary`` says what is in the database."""

    def __init__(self, summary: BenchSummary):
        super().__init__("benchmark interrupted")
        self.summary = summary



def default_workers(threads: int = 1) -> int:
    """Cores available to this process divided by the solver threads per job (at least 1)."""
    return max(1, _cores() // threads)


def max_workers() -> int:
    """The most local workers :func:`run` starts: :data:`WORKERS_PER_CORE` per core, within the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_fds = max(1, (soft - 64) // _FDS_PER_WORKER) if soft != resource.RLIM_INFINITY else 10**6
    return max(1, min(WORKERS_PER_CORE * _cores(), by_fds))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(config: BenchConfig | str | os.PathLike, *, db: str | os.PathLike | None = None, workers: int | None = None,
        scheduler: str | None = None, progress: bool = True, retry_errors: bool = False, lease: float = 120.0,
        patience: float = 900.0) -> BenchSummary:
    """Run a benchmark: every job of ``config`` that ``db`` does not hold yet.

    Parameters
    ----------
    config
        A :class:`BenchConfig` or the path of a TOML configuration.
    db
        The SQLite results store (default: the config's ``db`` key, else ``<name>.sqlite`` here).
    workers
        Worker processes of the local cluster (default: cores // threads per job; at most
        :func:`max_workers`).
    scheduler
        Address of an existing Dask scheduler (``tcp://host:port``) instead of a local cluster;
        the model files must be readable at the same paths on its workers.
    progress
        Show a progress bar (jobs done, ETA, running flip rates) on stderr.
    retry_errors
        Delete this configuration's rows with status 'error' first, so those jobs run again
        (by default a job that raised counts as finished, like any other).
    lease, patience
        Seconds a claim on a job lasts unless renewed (a run on another host that dies frees its
        jobs after this), and how long the store may stay unusable (locked, read-only, full) while
        nothing runs before the run gives up.

    Raises :class:`BenchInterrupted` (a KeyboardInterrupt) after a clean stop on Ctrl-C, and
    :class:`~bnnmip.errors.StoreError` when computed results could not be recorded (the message
    says where they are kept).
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, BenchConfig) else load_config(config)
    n_workers = _checked_workers(workers, scheduler, cfg.threads)
    jobs = expand(cfg)
    db_path = Path(db) if db is not None else (cfg.db or Path(f"{cfg.name}.sqlite"))
    store = ResultStore(db_path, busy_timeout=5.0)
    keys = {job.key for job in jobs}
    try:
        recover_journals(store)
        if retry_errors:
            store.delete_errors(keys)
        done = store.done_keys() & keys
        pending = [job for job in jobs if job.key not in done]
        tally = Tally().add_all(store.rows(done))
        cluster = f"scheduler {scheduler}" if scheduler else f"LocalCluster({n_workers} workers x 1 thread)"
        cluster += f", {cfg.threads} solver thread(s) per job"
        run_id = store.start_run(str(cfg.source or ""), _config_text(cfg), cluster, len(jobs), len(pending))
    except StoreUnavailable as e:
        raise StoreError(f"{e} (the database must be usable to start a benchmark)") from None
    drive = Drive(store, run_id, pending, tally, None, window=2 * n_workers, lease=lease, patience=patience)
    interrupted = False
    if pending:
        try:  # the cluster first: a scheduler that is not there is an error before any progress is shown
            with connect(None if scheduler else n_workers, scheduler) as client, \
                    _progress_bar(cfg.name, len(jobs), len(done), progress) as bar:
                drive.bar = bar
                bar.set_postfix_str(tally.postfix(), refresh=False)
                drive.run(client)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            drive.finish(deadline=5.0 if interrupted else min(30.0, patience))
    summary = _summary(cfg, db_path, store, keys, done, drive, time.perf_counter() - t0, cluster, interrupted)
    if interrupted:
        raise BenchInterrupted(summary)
    if drive.backlog.rows:
        kept = (f"kept in {drive.backlog.journal}, which the next `bnnmip bench` on this database records"
                if drive.backlog.journal is not None and not drive.backlog.journal_error
                else f"they could not be saved elsewhere either ({drive.backlog.journal_error})")
        raise StoreError(f"db {db_path}: {len(drive.backlog.rows)} computed result(s) are not in the database "
                         f"({drive.backlog.reason}); {kept}")
    if drive.gave_up:
        raise StoreError(f"{drive.store_error}: gave up after {patience:g} s; {summary.cancelled} job(s) not run, "
                         "every finished job is in the database")
    return summary


def _checked_workers(workers, scheduler: str | None, threads: int) -> int:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"workers={workers!r}: expected a positive integer")
    if workers is not None and scheduler is not None:
        raise InvalidArgumentError("workers: give either a number of local workers or a scheduler address, not both")
    if workers is not None and workers > max_workers():
        raise InvalidArgumentError(f"workers={workers}: over bnnmip's limit of {max_workers()} local workers "
                                   f"({WORKERS_PER_CORE} per core, within the open-file limit)")
    if scheduler is not None and not _is_address(scheduler):
        raise InvalidArgumentError(f"scheduler={scheduler!r}: expected an address such as tcp://host:8786")
    return workers or default_workers(threads)


def _is_address(text) -> bool:
    """``scheme://host[:port]`` with a scheme Dask speaks and a well-formed host and port."""
    if not isinstance(text, str) or len(text) > 1000:
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # ValueError for a port that is not a number in range
    except ValueError:
        return False
    if parts.scheme == "inproc":  # a cluster of threads in this process: inproc://host/pid/n
        return bool(parts.netloc)
    return parts.scheme in _SCHEMES and bool(parts.hostname) and (port is None or port > 0) \
        and not (parts.path.strip("/") or parts.query or parts.fragment)


def _summary(cfg, db_path, store, keys, done, drive: Drive, elapsed: float, cluster: str,
             interrupted: bool) -> BenchSummary:
    """What the run did, from the database when it can be read (rows other runs added included)."""
    tally = drive.tally
    final = len(done) + drive.recorded
    with contextlib.suppress(StoreError):
        now_done = store.done_keys() & keys
        tally, final = Tally().add_all(store.rows(now_done)), len(now_done)
    return BenchSummary(
        name=cfg.name, db=db_path, jobs=len(keys), skipped=len(done), ran=drive.recorded,
        cancelled=len(keys) - final, statuses=_ordered(tally), flip_rates=tally.flip_rates(), elapsed=elapsed,
        job_seconds=drive.job_seconds, cluster=cluster, interrupted=interrupted,
        by_others=max(0, final - len(done) - drive.recorded), unrecorded=len(drive.backlog.rows),
    )


@contextlib.contextmanager
def connect(workers: int | None, scheduler: str | None) -> Iterator:
    """A Dask client: on a new ``LocalCluster`` of ``workers`` processes, or on ``scheduler``.

    The local cluster (and the client) are closed on exit, including on Ctrl-C.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except Exception as e:  # noqa: BLE001 - distributed raises ValueError, TypeError, OSError, ... on bad addresses
            raise InvalidArgumentError(f"scheduler={scheduler!r}: cannot connect ({type(e).__name__}: {e})") from None
        try:
            yield client
        finally:
            _quietly_close(client)
        return
    with _sigint_ignored():  # workers log only what is fatal: a heartbeat lost while shutting down is not
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            _quietly_close(client)
    finally:
        _quietly_close(cluster)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes are spawned, so that they inherit "ignore".

    Ctrl-C in a terminal signals the whole process group; only the coordinator should react
    (cancel, close the cluster, keep what it recorded), not every worker with a traceback.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quietly_close(obj) -> None:
    # After Ctrl-C the worker processes may already be gone (they got the SIGINT too); closing
    # must not replace the interrupt with a shutdown error.
    with contextlib.suppress(OSError, TimeoutError, RuntimeError):
        obj.close()



def _progress_bar(name: str, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="job", disable=not enabled, smoothing=0.05,
                dynamic_ncols=True)


def _ordered(tally: Tally) -> tuple[tuple[str, int], ...]:
    order = list(STATUS_ORDER) + sorted(set(tally.statuses) - set(STATUS_ORDER))
    return tuple((s, tally.statuses[s]) for s in order if tally.statuses[s])


def _config_text(cfg: BenchConfig) -> str:
    if cfg.source is not None and cfg.source.is_file():
        return cfg.source.read_text()
    return repr(cfg)
