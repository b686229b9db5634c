"""Native HiGHS backend (highspy): the model in one ``passModel`` call with the CSR arrays."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..milp.backend import Capabilities, SolveOptions
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution
from ..status import SolveStatus
from ..timing import Deadline
from .base import Backend, IncumbentTrace

_FEASIBLE = 2  # HiGHS solution status kSolutionStatusFeasible
# HiGHS checks its clock between units of work (a root separation round on the 784-pixel models
# takes up to ~1.5 s on a loaded machine) and its interrupt callback fires no more often, so it
# is asked to stop this much before the caller's limit: min(cap, share * remaining) seconds.
OVERSHOOT_SHARE, OVERSHOOT_CAP = 0.25, 0.5


def _highspy():
    import highspy  # lazy: a missing solver is a clear SolverError (Backend.require), not an ImportError

    return highspy


def _status_map() -> dict:
    status = _highspy().HighsModelStatus
    limits = (status.kTimeLimit, status.kInterrupt, status.kHighsInterrupt, status.kSolutionLimit,
              status.kIterationLimit, status.kObjectiveBound, status.kObjectiveTarget)
    return {status.kOptimal: SolveStatus.OPTIMAL, status.kInfeasible: SolveStatus.INFEASIBLE,
            **{s: SolveStatus.TIME_LIMIT for s in limits}}


def _finite(values: np.ndarray, inf: float) -> np.ndarray:
    return np.clip(np.asarray(values, np.float64), -inf, inf)


_banner_shown = False


def new_highs():
    """A Highs instance; the copyright banner HiGHS prints once per process goes to /dev/null."""
    global _banner_shown
    highspy = _highspy()
    if _banner_shown:
        return highspy.Highs()
    _banner_shown = True
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solver_limit(remaining: float | None, share: float = OVERSHOOT_SHARE, cap: float = OVERSHOOT_CAP
                 ) -> float | None:
    """The time limit to give HiGHS so that it returns within ``remaining`` seconds."""
    if remaining is None:
        return None
    return max(remaining - min(cap, share * remaining), 1e-3)


def build(model: MilpModel, verbose: bool = False):
    """A Highs instance holding ``model``, passed in one call (row-wise CSR)."""
    h = new_highs()
    h.setOptionValue("output_flag", bool(verbose))
    inf = h.getInfinity()
    A = model.A
    h.passModel(
        model.num_cols, model.num_rows, model.nnz, 2,  # 2 = kRowwise
        -1 if model.sense == "max" else 1, float(model.objective_offset),
        _finite(model.objective, inf), _finite(model.col_lower, inf), _finite(model.col_upper, inf),
        _finite(model.row_lower, inf), _finite(model.row_upper, inf),
        np.asarray(A.indptr, np.int32), np.asarray(A.indices, np.int32), np.asarray(A.data, np.float64),
        model.integrality.astype(np.int32),
    )
    return h


def configure(h, time_limit: float | None, threads: int | None, verbose: bool, mip_gap: float | None = None) -> None:
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("time_limit", float(time_limit) if time_limit else h.getInfinity())
    # By default ask for a closed gap; the robust verdict reads the dual bound either way.
    h.setOptionValue("mip_rel_gap", 1e-9 if mip_gap is None else float(mip_gap))
    h.setOptionValue("mip_abs_gap", 1e-9)
    if threads:
        h.setOptionValue("threads", int(threads))


_scheduler_threads: int | None = None  # the thread count HiGHS's process-wide scheduler was started with


def _match_scheduler(h) -> None:
    """HiGHS starts one task scheduler per process, with the thread count of the first run, and
    refuses (status error, nothing solved) a later run that asks for another count: a solve with
    ``threads=1`` after one with the default failed in 0.1 s.  Restart the scheduler when the count
    changes (bnnmip runs one HiGHS solve at a time per process)."""
    global _scheduler_threads
    wanted = h.getOptionValue("threads")  # 0: HiGHS's default
    wanted = int(wanted[-1] if isinstance(wanted, tuple) else wanted)  # highspy >= 1.8: (status, value)
    if _scheduler_threads is not None and _scheduler_threads != wanted:
        _highspy().Highs.resetGlobalScheduler(True)
    _scheduler_threads = wanted


def run(h, model: MilpModel, *, t0: float, start=None, on_incumbent=None, deadline: float | None = None,
        on_progress=None) -> MilpSolution:
    """Run a configured Highs instance and read its outcome into a :class:`MilpSolution`.

    ``deadline`` (a ``time.perf_counter()`` value) is enforced from HiGHS's MIP interrupt
    callback as well as by its own time limit: HiGHS checks its clock by work done, which
    overshoots on a loaded machine.
    """
    trace = IncumbentTrace(t0, on_incumbent, on_progress)

    def improving(event):
        trace.record(event.data_out.objective_function_value, lambda: event.data_out.mip_solution)

    def interrupt(event):  # HiGHS honours an interrupt only from its interrupt callback
        trace.progress(event.data_out.mip_primal_bound, event.data_out.mip_dual_bound)
        if trace.stop or (deadline is not None and time.perf_counter() >= deadline):
            event.interrupt()

    if start is not None:
        solution = _highspy().HighsSolution()
        solution.col_value = np.asarray(start, np.float64).tolist()
        h.setSolution(solution)
    h.cbMipImprovingSolution.subscribe(improving)
    h.cbMipInterrupt.subscribe(interrupt)
    _match_scheduler(h)
    try:
        h.run()
    finally:
        h.cbMipImprovingSolution.unsubscribe(improving)
        h.cbMipInterrupt.unsubscribe(interrupt)
    return _outcome(h, model, time.perf_counter() - t0, tuple(trace.points))


def _outcome(h, model: MilpModel, elapsed: float, trace: tuple) -> MilpSolution:
    status = _status_map().get(h.getModelStatus(), SolveStatus.ERROR)
    info = h.getInfo()
    has_solution = info.primal_solution_status == _FEASIBLE
    bound = float(info.mip_dual_bound) if model.integrality.any() else float(info.objective_function_value)
    bound = None if not np.isfinite(bound) or abs(bound) >= 1e30 else bound
    if status == SolveStatus.ERROR or (status == SolveStatus.OPTIMAL and not has_solution):
        message = f"HiGHS status {h.modelStatusToString(h.getModelStatus())}"
        return MilpSolution.failure(HighsBackend.name, SolveStatus.ERROR, elapsed, message)
    if not has_solution:
        return MilpSolution(status, None, None, bound, None, elapsed, HighsBackend.name, trace=trace)
    values = np.asarray(h.getSolution().col_value, np.float64)
    if status == SolveStatus.TIME_LIMIT:
        status = SolveStatus.FEASIBLE
    return MilpSolution.found(HighsBackend.name, status, values, float(info.objective_function_value), bound,
                              elapsed, trace=trace)


class HighsBackend(Backend):
    """HiGHS through highspy: warm starts, incumbent callbacks, threads, in-place sessions, LPs."""

    name = "highs"
    title = "HiGHS"
    package = "highspy"
    capabilities = Capabilities(warm_start=True, incumbent_callback=True, progress=True, in_place_session=True,
                                threads=True, lp=True)

    def _build(self, model: MilpModel, options: SolveOptions, deadline: Deadline):
        return build(model, options.verbose)

    def _configure(self, h, deadline: Deadline, options: SolveOptions) -> None:
        configure(h, solver_limit(deadline.seconds_left()), options.threads, options.verbose, options.mip_gap)

    def _run(self, h, model: MilpModel, deadline: Deadline, options: SolveOptions) -> MilpSolution:
        return run(h, model, t0=deadline.t0, start=options.start, on_incumbent=options.on_incumbent,
                   deadline=deadline.end if deadline.limited else None, on_progress=options.on_progress)

    def _session(self, model: MilpModel, threads: int | None, mip_gap: float | None) -> HighsSession:
        return HighsSession(model, threads, mip_gap)


class HighsSession:
    """A Highs instance kept across solves; updates are applied in place (no rebuild).

    A pure LP is re-solved with the dual simplex from the previous basis, without presolve or
    scaling (measured 2-4x faster than HiGHS's defaults on the ±1 rows of LP bound tightening).
    """

    def __init__(self, model: MilpModel, threads: int | None = None, mip_gap: float | None = None):
        self.model = model
        self.h = build(model)
        configure(self.h, None, threads, False, mip_gap)
        self.inf = self.h.getInfinity()
        # HiGHS's LP solver reads a run clock that adds up over the runs of one instance (its MIP
        # solver restarts it per run): an LP gets its limit on top of the time used so far.
        self.clock_adds_up = not model.integrality.any()
        if self.clock_adds_up:
            self.h.setOptionValue("presolve", "off")  # keep the basis between changes
            self.h.setOptionValue("solver", "simplex")
            self.h.setOptionValue("simplex_strategy", 1)  # dual simplex
            self.h.setOptionValue("simplex_scale_strategy", 0)

    def set_col_bounds(self, cols, lower, upper) -> None:
        cols = np.asarray(cols, np.int32)
        if len(cols):
            self.h.changeColsBounds(len(cols), cols, _finite(lower, self.inf), _finite(upper, self.inf))

    def set_objective(self, cols, costs) -> None:
        cols = np.asarray(cols, np.int32)
        if len(cols):
            self.h.changeColsCost(len(cols), cols, np.asarray(costs, np.float64))

    def set_row_bounds(self, rows, lower, upper) -> None:
        rows = np.asarray(rows, np.int32)
        if len(rows):
            self.h.changeRowsBounds(len(rows), rows, _finite(lower, self.inf), _finite(upper, self.inf))

    def set_entries(self, rows, cols, values) -> None:
        change = self.h.changeCoeff
        for row, col, value in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(),
                                   np.asarray(values, np.float64).tolist()):
            change(row, col, value)

    def solve(self, time_limit: float | None = None, start=None) -> MilpSolution:
        limit = self.inf
        if time_limit:
            limit = float(time_limit) + (self.h.getRunTime() if self.clock_adds_up else 0.0)
        self.h.setOptionValue("time_limit", limit)
        t0 = time.perf_counter()
        return run(self.h, self.model, t0=t0, start=start, deadline=t0 + float(time_limit) if time_limit else None)
