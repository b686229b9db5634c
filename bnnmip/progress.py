"""Progress of long solves: what an attack, a search or a verification reports while it runs.

Anything that solves for a while calls a :class:`Progress` object: ``update(incumbent=, bound=,
stage=)`` with the best objective found so far, an upper bound on it (a MILP's dual bound) and what
it is doing ("MILP target 7 (1/9)").  The base class ignores every call, so the Python API is quiet
unless asked; :func:`as_progress` turns what a user passes as ``progress=`` into one:

* ``True``: :class:`ProgressLine`, a live line on stderr (tqdm) once the solve has run a moment;
* a callable: :class:`CallbackProgress`, called with a :class:`ProgressState` at most every
  ``interval`` seconds (and at each new stage);
* a :class:`Progress`: used as it is (the command line passes its own line).

:meth:`Progress.scoped` prefixes the stages of a sub-solve ("radius 4 · MILP target 7 (1/9)");
:func:`reports_progress` lets a function take any of these as ``progress=`` and see a :class:`Progress`.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class ProgressState:
    """One report: seconds since the start, best objective found, upper bound on it, current stage."""

    elapsed: float
    incumbent: float | None
    bound: float | None
    stage: str

    def describe(self) -> str:
        """One line: ``stage | incumbent 0.31 | bound 1.2 | 3.4 s``."""
        parts = [self.stage] if self.stage else []
        parts.append("incumbent " + ("-" if self.incumbent is None else f"{self.incumbent:.4g}"))
        parts.append("bound " + ("-" if self.bound is None else f"{self.bound:.4g}"))
        parts.append(f"{self.elapsed:.1f} s")
        return " | ".join(parts)


class Progress:
    """The reporting interface; this base class ignores every report (the Python API's default)."""

    enabled = False

    def update(self, *, incumbent: float | None = None, bound: float | None = None, stage: str | None = None,
               reset: bool = False) -> None:
        """Report a new incumbent, bound and/or stage (``reset``: a new sub-problem, forget both numbers)."""

    def close(self) -> None:
        """The solve is over (a live line is cleared)."""

    def scoped(self, prefix: str) -> Progress:
        """A view whose stages read ``prefix · stage`` (for a solve inside a larger one)."""
        return _Scoped(self, prefix) if self.enabled else self

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_PROGRESS = Progress()


class _Tracking(Progress):
    """Keeps the latest state; subclasses decide when to show it (:meth:`_show`)."""

    enabled = True

    def __init__(self, interval: float):
        self.interval = interval
        self.t0 = time.perf_counter()
        self.incumbent: float | None = None
        self.bound: float | None = None
        self.stage = ""
        self.shown_at = -float("inf")
        self.lock = threading.Lock()

    def state(self) -> ProgressState:
        return ProgressState(time.perf_counter() - self.t0, self.incumbent, self.bound, self.stage)

    def update(self, *, incumbent=None, bound=None, stage=None, reset=False) -> None:
        with self.lock:
            if reset:
                self.incumbent = self.bound = None
            if incumbent is not None:
                self.incumbent = float(incumbent)
            if bound is not None:
                self.bound = float(bound)
            new_stage = stage is not None and stage != self.stage
            if stage is not None:
                self.stage = stage
            now = time.perf_counter()
            if not new_stage and now - self.shown_at < self.interval:
                return
            self.shown_at = now
            state = self.state()
        self._show(state)

    def _show(self, state: ProgressState) -> None:
        raise NotImplementedError


class CallbackProgress(_Tracking):
    """Calls ``callback(ProgressState)`` at most every ``interval`` seconds, and at every new stage."""

    def __init__(self, callback: Callable[[ProgressState], object], interval: float = 0.2):
        super().__init__(interval)
        self.callback = callback

    def _show(self, state: ProgressState) -> None:
        self.callback(state)


class ProgressLine(_Tracking):
    """A live line on ``file`` (stderr): stage, incumbent, bound, elapsed seconds.

    It appears once the solve has run ``delay`` seconds (quick solves print nothing), is redrawn at
    most every ``interval`` seconds and, from a background thread, every ``tick`` seconds so that
    the clock moves while a solver is busy; :meth:`close` clears it.
    """

    def __init__(self, delay: float = 1.5, interval: float = 0.2, tick: float = 0.5, file=None):
        super().__init__(interval)
        self.delay, self.file = delay, file if file is not None else sys.stderr
        self.bar = None
        self.stopped = threading.Event()
        self.ticker = threading.Thread(target=self._tick, args=(tick,), name="bnnmip-progress", daemon=True)
        self.ticker.start()

    def _tick(self, tick: float) -> None:
        while not self.stopped.wait(tick):
            with self.lock:
                state = self.state()
            self._show(state)

    def _show(self, state: ProgressState) -> None:
        if state.elapsed < self.delay or self.stopped.is_set():
            return
        from tqdm import tqdm  # third-party; only once a line is shown

        with self.lock:
            if self.stopped.is_set():
                return
            if self.bar is None:
                self.bar = tqdm(total=None, bar_format="{desc}", file=self.file, leave=False, dynamic_ncols=True)
            self.bar.set_description_str(state.describe())

    def close(self) -> None:
        self.stopped.set()
        with self.lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


class _Scoped(Progress):
    """Forwards to ``parent`` with every stage prefixed."""

    enabled = True

    def __init__(self, parent: Progress, prefix: str):
        self.parent, self.prefix = parent, prefix

    def update(self, *, incumbent=None, bound=None, stage=None, reset=False) -> None:
        stage = None if stage is None else f"{self.prefix} · {stage}" if stage else self.prefix
        self.parent.update(incumbent=incumbent, bound=bound, stage=stage, reset=reset)


def as_progress(progress) -> Progress:
    """A :class:`Progress` from what a caller passed as ``progress=`` (see the module docstring)."""
    if progress is None or progress is False:
        return NO_PROGRESS
    if progress is True:
        return ProgressLine()
    if isinstance(progress, Progress):
        return progress
    if callable(progress):
        return CallbackProgress(progress)
    raise InvalidArgumentError(f"progress={progress!r}: expected True, False, a callable or a bnnmip Progress")


@contextmanager
def opened(progress) -> Iterator[Progress]:
    """:func:`as_progress` for the length of a ``with`` block; a line made here is closed at its end."""
    reporter = as_progress(progress)
    try:
        yield reporter
    finally:
        if reporter is not progress:
            reporter.close()


def reports_progress(fn):
    """Decorate ``fn(..., progress=...)`` so that it may be given anything :func:`as_progress` takes and
    always sees a :class:`Progress`; a line made for the call is closed when it returns."""

    @functools.wraps(fn)
    def wrapper(*args, progress=None, **kwargs):
        with opened(progress) as report:
            return fn(*args, progress=report, **kwargs)

    return wrapper
