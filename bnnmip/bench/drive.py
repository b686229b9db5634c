"""The coordinator's loop (:class:`Drive`): claim jobs, submit them, record results, never lose one.

* **Claims.**  Jobs are claimed in the results store a window at a time (twice the cluster's worker
  threads, looked at every half minute) before they are submitted, and their leases renewed while
  they run (:class:`~.store.ResultStore`): a second ``bnnmip bench`` on the same database runs
  other jobs.  When only jobs that other live
  runs hold are left, the loop waits for their rows (or takes them over if their owner dies), so a
  run that returns has seen every job of its configuration end.
* **Failures of the store.**  A result the database refuses (locked, read-only, disk full) goes to
  the :class:`~.backlog.Backlog` (memory and a side journal) and is retried every few seconds and
  at the end; claiming waits for the database to come back.  If it stays unusable for ``patience``
  seconds with nothing running, the loop stops and the run reports what it still holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

from .backlog import Backlog
from .jobs import Job
from .report import Tally
from .rows import ResultRow
from .store import ResultStore, StoreUnavailable
from .worker import ERROR, JobResult, execute

_TICK = 0.05  # seconds between polls of the cluster
_RETRY = 2.0  # seconds between retries of a refused write, and polls of jobs held elsewhere
_RESIZE = 30.0  # seconds between looks at the cluster's size


@dataclass
class Drive:
    """One run's jobs through the cluster and into the store (see the module docstring)."""

    store: ResultStore
    run_id: str
    pending: list[Job]
    tally: Tally
    bar: object
    window: int
    lease: float = 120.0
    patience: float = 900.0
    recorded: int = 0  # rows this run inserted
    duplicates: int = 0  # results whose job another run recorded first
    job_seconds: float = 0.0
    store_error: str = ""  # why the store last refused a read or write
    gave_up: bool = False  # the store stayed unusable for ``patience`` seconds with nothing running
    backlog: Backlog = field(init=False)

    def __post_init__(self):
        self.backlog = Backlog(self.store.path, self.run_id)
        self.waiting: deque[Job] = deque(self.pending)  # not claimed by this run yet
        self.held: dict[str, Job] = {}  # claimed by other live runs
        self.in_flight: dict = {}  # future -> job
        self.t0 = time.perf_counter()
        self.last_ok = time.monotonic()  # the last time the store took a write
        self.next_renew = self.next_retry = self.next_size = 0.0

    def run(self, client) -> None:
        """Until every pending job has a row (here or elsewhere), or the store stays unusable too long."""
        from distributed import as_completed

        futures = as_completed()
        try:
            while self.waiting or self.held or self.in_flight:
                self._size_window(client)
                self._claim_and_submit(client, futures)
                ready = futures.next_batch(block=False) if futures.has_ready() else []
                for future in ready:
                    self._record(future)
                self._housekeeping()
                if not ready:
                    if not self.in_flight and time.monotonic() - self.last_ok > self.patience:
                        self.gave_up = True  # the store has been unusable for too long and nothing is running
                        break
                    time.sleep(_TICK if self.in_flight else min(_RETRY, 0.5))
        finally:
            if self.in_flight:
                with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                    client.cancel(list(self.in_flight))
            self.in_flight.clear()

    # ------------------------------------------------------------------ claims
    def _size_window(self, client) -> None:
        """Twice the cluster's worker threads (a remote cluster grows and shrinks): every worker stays busy."""
        now = time.monotonic()
        if now < self.next_size:
            return
        self.next_size = now + _RESIZE
        with contextlib.suppress(Exception):  # a cluster that does not answer keeps the last size
            self.window = max(2, 2 * sum(client.nthreads().values()))

    def _claim_and_submit(self, client, futures) -> None:
        free = self.window - len(self.in_flight)
        if free <= 0 or not (self.waiting or self.held) or time.monotonic() < self.next_retry:
            return
        if not self.waiting:  # only jobs other runs hold: see whether they ended, or their owners did
            self.waiting.extend(self.held.values())
            self.held.clear()
            self.next_retry = time.monotonic() + _RETRY
        batch = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        try:
            claimed, elsewhere = self.store.claim([job.key for job in batch], self.run_id, self.lease)
        except StoreUnavailable as e:
            self.waiting.extendleft(reversed(batch))
            self._unavailable(str(e))
            return
        self.last_ok = time.monotonic()
        for job in batch:
            if job.key in claimed:
                key = f"bnnmip-bench-{hashlib.sha1((self.run_id + job.key).encode()).hexdigest()}"
                future = client.submit(execute, job, key=key, pure=False)
                self.in_flight[future] = job
                futures.add(future)
            elif job.key in elsewhere:
                self.held[job.key] = job
            # else: recorded by another run meanwhile

    # ------------------------------------------------------------------ results
    def _record(self, future) -> None:
        job = self.in_flight.pop(future, None)
        result = _collect(future)
        future.release()
        if job is None or result is None:  # cancelled: not recorded, so a later run does it
            return
        row = ResultRow.make(job, result, self.run_id)
        if self.backlog.rows:  # keep the order: this row waits behind the others
            self.backlog.keep(row, self.backlog.reason)
            self._flush()
        else:
            try:
                inserted = self.store.add(row)
            except StoreUnavailable as e:
                self.backlog.keep(row, str(e))
                self._unavailable(str(e))
            else:
                self.last_ok = time.monotonic()
                self.recorded += inserted
                self.duplicates += not inserted
        self.job_seconds = time.perf_counter() - self.t0
        self.tally.add(row)
        self.bar.set_postfix_str(self.tally.postfix(), refresh=False)
        self.bar.update(1)

    def _flush(self) -> None:
        held = len(self.backlog)
        inserted = self.backlog.flush(self.store)
        if held and not self.backlog.rows:
            self.last_ok = time.monotonic()
            self.recorded += inserted
            self.duplicates += held - inserted
        elif held:
            self._unavailable(self.backlog.reason)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.backlog.rows and now >= self.next_retry:
            self.next_retry = now + _RETRY
            self._flush()
        if self.in_flight and now >= self.next_renew:
            self.next_renew = now + self.lease / 4
            try:
                self.store.renew(self.run_id, self.lease)
            except StoreUnavailable as e:
                self._unavailable(str(e))

    def _unavailable(self, reason: str) -> None:
        self.store_error = reason
        self.next_retry = time.monotonic() + _RETRY

    # ------------------------------------------------------------------ the end
    def finish(self, deadline: float = 30.0) -> None:
        """Release this run's claims and record the backlog, retrying for up to ``deadline`` seconds."""
        end = time.monotonic() + deadline
        while self.backlog.rows and time.monotonic() < end:
            self._flush()
            if self.backlog.rows:
                time.sleep(min(_RETRY, max(0.0, end - time.monotonic())))
        with contextlib.suppress(StoreUnavailable):
            self.store.release(self.run_id)
        self.backlog.close()


def _collect(future) -> JobResult | None:
    """The job's result; an error result if the task failed outside the job (a worker died); None if cancelled."""
    from concurrent.futures import CancelledError

    try:
        return future.result()
    except CancelledError:
        return None
    except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the job crashed its worker; recorded as an error
        return JobResult(ERROR, error=f"{type(e).__name__}: {e}")
