"""Running a benchmark on Dask: :func:`run`.

The coordinating process expands the configuration into jobs, drops those already in the results
store, submits the rest to a Dask cluster (a ``LocalCluster`` of single-threaded worker processes,
or an existing scheduler) and records each result as it arrives (``as_completed``).  Workers only
compute; the coordinator alone writes the database, one transaction per job.

Cores: each worker runs one job at a time (``threads_per_worker=1``) and each job's solver gets
``threads`` threads, so ``workers × threads`` should not exceed the cores (the default number of
workers is ``cores // threads``).  With ``--scheduler``, size the cluster's workers the same way.

Ctrl-C (or SIGTERM from the CLI) cancels the outstanding jobs and closes the cluster; every result
received so far is in the database, and rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError
from .config import BenchConfig, load_config
from .jobs import Job, expand
from .report import STATUS_ORDER, Tally
from .store import ResultRow, ResultStore
from .worker import ERROR, JobResult, execute


@dataclass(frozen=True)
class BenchSummary:
    """What a call of :func:`run` did."""

    name: str
    db: Path
    jobs: int  # jobs in the configuration
    skipped: int  # already in the database before this run
    ran: int  # recorded by this run
    cancelled: int  # submitted but not recorded (interrupted, or the cluster went away)
    statuses: tuple[tuple[str, int], ...]  # over all the configuration's recorded jobs
    flip_rates: tuple[tuple[str, int, int], ...]  # (method variant, flipped, attacked)
    elapsed: float  # seconds, the whole call
    job_seconds: float  # seconds from the first submission to the last recorded result
    cluster: str
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return self.skipped + self.ran == self.jobs

    @property
    def jobs_per_hour(self) -> float | None:
        """Throughput of this run (recorded jobs per hour of job time)."""
        return 3600.0 * self.ran / self.job_seconds if self.ran and self.job_seconds > 0 else None

    def __str__(self) -> str:
        state = "interrupted" if self.interrupted else ("complete" if self.complete else "incomplete")
        if self.ran or self.cancelled:
            this_run = (f"{self.ran} jobs in {self.elapsed:.1f} s on {self.cluster}"
                        + (f" ({self.jobs_per_hour:,.0f} jobs/hour)" if self.jobs_per_hour else "")
                        + (f"; {self.skipped} already done" if self.skipped else ""))
        else:
            this_run = "nothing to run: every job is in the database"
        lines = [
            f"benchmark  {self.name}: {state}, {self.skipped + self.ran}/{self.jobs} jobs in {self.db}",
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
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // threads)


def run(config: BenchConfig | str | os.PathLike, *, db: str | os.PathLike | None = None, workers: int | None = None,
        scheduler: str | None = None, progress: bool = True, retry_errors: bool = False) -> BenchSummary:
    """Run a benchmark: every job of ``config`` that ``db`` does not hold yet.

    Parameters
    ----------
    config
        A :class:`BenchConfig` or the path of a TOML configuration.
    db
        The SQLite results store (default: the config's ``db`` key, else ``<name>.sqlite`` here).
    workers
        Worker processes of the local cluster (default: cores // threads per job).
    scheduler
        Address of an existing Dask scheduler (``tcp://host:port``) instead of a local cluster;
        the model files must be readable at the same paths on its workers.
    progress
        Show a progress bar (jobs done, ETA, running flip rates) on stderr.
    retry_errors
        Delete this configuration's rows with status 'error' first, so those jobs run again
        (by default a job that raised counts as finished, like any other).

    Raises :class:`BenchInterrupted` (a KeyboardInterrupt) after a clean stop on Ctrl-C.
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, BenchConfig) else load_config(config)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"workers={workers!r}: expected a positive integer")
    if workers is not None and scheduler is not None:
        raise InvalidArgumentError("workers: give either a number of local workers or a scheduler address, not both")
    jobs = expand(cfg)
    db_path = Path(db) if db is not None else (cfg.db or Path(f"{cfg.name}.sqlite"))
    with ResultStore(db_path) as store:
        keys = {job.key for job in jobs}
        if retry_errors:
            store.delete_errors(keys)
        done = store.done_keys() & keys
        pending = [job for job in jobs if job.key not in done]
        tally = Tally().add_all(store.rows(done))
        n_workers = workers or default_workers(cfg.threads)
        cluster = f"scheduler {scheduler}" if scheduler else f"LocalCluster({n_workers} workers x 1 thread)"
        cluster += f", {cfg.threads} solver thread(s) per job"
        run_id = store.start_run(str(cfg.source or ""), _config_text(cfg), cluster, len(jobs), len(pending))
        outcome = _Outcome()
        if pending:
            with _progress_bar(cfg.name, len(jobs), len(done), progress) as bar:
                bar.set_postfix_str(tally.postfix(), refresh=False)
                try:
                    with connect(None if scheduler else n_workers, scheduler) as client:
                        _drive(client, pending, store, run_id, tally, bar, outcome)
                except KeyboardInterrupt:
                    outcome.interrupted = True
    summary = BenchSummary(
        name=cfg.name, db=db_path, jobs=len(jobs), skipped=len(done), ran=outcome.recorded,
        cancelled=len(pending) - outcome.recorded, statuses=_ordered(tally), flip_rates=tally.flip_rates(),
        elapsed=time.perf_counter() - t0, job_seconds=outcome.job_seconds, cluster=cluster,
        interrupted=outcome.interrupted,
    )
    if outcome.interrupted:
        raise BenchInterrupted(summary)
    return summary


@dataclass
class _Outcome:
    recorded: int = 0
    job_seconds: float = 0.0
    interrupted: bool = False


@contextlib.contextmanager
def connect(workers: int | None, scheduler: str | None) -> Iterator:
    """A Dask client: on a new ``LocalCluster`` of ``workers`` processes, or on ``scheduler``.

    The local cluster (and the client) are closed on exit, including on Ctrl-C.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise InvalidArgumentError(f"scheduler={scheduler!r}: cannot connect ({e})") from None
        try:
            yield client
        finally:
            _quietly_close(client)
        return
    with _sigint_ignored():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
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


def _drive(client, pending: list[Job], store: ResultStore, run_id: str, tally: Tally, bar, outcome: _Outcome) -> None:
    """Submit ``pending`` and record each result as it arrives; cancel the rest on Ctrl-C."""
    from distributed import as_completed

    t0 = time.perf_counter()
    keys = [f"bnnmip-bench-{hashlib.sha1(job.key.encode()).hexdigest()}" for job in pending]
    futures = client.map(execute, pending, key=keys, pure=False)
    job_of = dict(zip(futures, pending, strict=True))
    try:
        for future in as_completed(futures):
            result = _collect(future)
            job = job_of.pop(future)
            future.release()
            if result is None:  # cancelled: not recorded, so the next run does it
                continue
            row = ResultRow.make(job, result, run_id)
            outcome.recorded += store.add(row)
            outcome.job_seconds = time.perf_counter() - t0
            tally.add(row)
            bar.set_postfix_str(tally.postfix(), refresh=False)
            bar.update(1)
    finally:
        if job_of:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                client.cancel(list(job_of))


def _collect(future) -> JobResult | None:
    """The job's result; an error result if the task failed outside the job (a worker died); None if cancelled."""
    from concurrent.futures import CancelledError

    try:
        return future.result()
    except CancelledError:
        return None
    except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the job crashed its worker; recorded as an error
        return JobResult(ERROR, error=f"{type(e).__name__}: {e}")


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
