"""Native HiGHS backend (highspy): one ``passModel`` call with the CSR arrays."""

from __future__ import annotations

import os
import sys
import time

import highspy
import numpy as np

from ..milp.model import MilpModel, MilpSolution, relative_gap, remaining_time

NAME = "highs"
_STATUS = {
    highspy.HighsModelStatus.kOptimal: "optimal",
    highspy.HighsModelStatus.kInfeasible: "infeasible",
    highspy.HighsModelStatus.kTimeLimit: "time_limit",
    highspy.HighsModelStatus.kInterrupt: "time_limit",
    highspy.HighsModelStatus.kHighsInterrupt: "time_limit",
    highspy.HighsModelStatus.kSolutionLimit: "time_limit",
    highspy.HighsModelStatus.kIterationLimit: "time_limit",
    highspy.HighsModelStatus.kObjectiveBound: "time_limit",
    highspy.HighsModelStatus.kObjectiveTarget: "time_limit",
}
_FEASIBLE = 2  # HiGHS solution status kSolutionStatusFeasible


def _finite(values: np.ndarray, inf: float) -> np.ndarray:
    return np.clip(np.asarray(values, np.float64), -inf, inf)


_banner_shown = False


def new_highs() -> highspy.Highs:
    """A Highs instance; the copyright banner HiGHS prints once per process goes to /dev/null."""
    global _banner_shown
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


def build(model: MilpModel, verbose: bool = False) -> highspy.Highs:
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


def configure(h: highspy.Highs, time_limit: float | None, threads: int | None, verbose: bool,
              mip_gap: float | None = None) -> None:
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("time_limit", float(time_limit) if time_limit else h.getInfinity())
    # By default ask for a closed gap; the robust verdict reads the dual bound either way.
    h.setOptionValue("mip_rel_gap", 1e-9 if mip_gap is None else float(mip_gap))
    h.setOptionValue("mip_abs_gap", 1e-9)
    if threads:
        h.setOptionValue("threads", int(threads))


def run(h: highspy.Highs, model: MilpModel, *, t0: float, start=None, on_incumbent=None,
        deadline: float | None = None) -> MilpSolution:
    """Run a configured Highs instance and read its outcome into a :class:`MilpSolution`.

    ``deadline`` (a ``time.perf_counter()`` value) is enforced from HiGHS's MIP interrupt
    callback as well as by its own time limit: HiGHS checks its clock by work done, which
    overshoots on a loaded machine.
    """
    trace, stop = [], []

    def improving(event):
        objective = float(event.data_out.objective_function_value)
        trace.append((time.perf_counter() - t0, objective))
        if on_incumbent is not None:
            values = np.asarray(event.data_out.mip_solution, np.float64)
            if on_incumbent(values, objective):
                stop.append(True)

    def interrupt(event):  # HiGHS honours an interrupt only from its interrupt callback
        if stop or (deadline is not None and time.perf_counter() >= deadline):
            event.interrupt()

    if start is not None:
        solution = highspy.HighsSolution()
        solution.col_value = np.asarray(start, np.float64).tolist()
        h.setSolution(solution)
    h.cbMipImprovingSolution.subscribe(improving)
    h.cbMipInterrupt.subscribe(interrupt)
    try:
        h.run()
    finally:
        h.cbMipImprovingSolution.unsubscribe(improving)
        h.cbMipInterrupt.unsubscribe(interrupt)
    elapsed = time.perf_counter() - t0
    status = _STATUS.get(h.getModelStatus(), "error")
    info = h.getInfo()
    has_solution = info.primal_solution_status == _FEASIBLE
    bound = float(info.mip_dual_bound) if model.integrality.any() else float(info.objective_function_value)
    bound = None if not np.isfinite(bound) or abs(bound) >= 1e30 else bound
    if status == "error" or (status == "optimal" and not has_solution):
        return MilpSolution.failure(NAME, "error", elapsed, f"HiGHS status {h.modelStatusToString(h.getModelStatus())}")
    if not has_solution:
        return MilpSolution(status, None, None, bound, None, elapsed, NAME, trace=tuple(trace))
    values = np.asarray(h.getSolution().col_value, np.float64)
    objective = float(info.objective_function_value)
    if status == "time_limit":
        status = "feasible"
    return MilpSolution(status, values, objective, bound, relative_gap(objective, bound), elapsed, NAME,
                        trace=tuple(trace))


# HiGHS checks its clock between units of work (a root separation round on the 784-pixel models
# takes up to ~1.5 s on a loaded machine) and its interrupt callback fires no more often, so it
# is asked to stop this much before the caller's limit: min(cap, share * remaining) seconds.
OVERSHOOT_SHARE, OVERSHOOT_CAP = 0.25, 0.5


def solver_limit(remaining: float | None, share: float = OVERSHOOT_SHARE, cap: float = OVERSHOOT_CAP
                 ) -> float | None:
    """The time limit to give HiGHS so that it returns within ``remaining`` seconds."""
    if remaining is None:
        return None
    return max(remaining - min(cap, share * remaining), 1e-3)


def solve(model: MilpModel, *, time_limit=None, threads=None, verbose=False, solver=None, start=None,
          on_incumbent=None, t0: float, mip_gap=None) -> MilpSolution:
    h = build(model, verbose)
    remaining = remaining_time(time_limit, t0)
    if remaining is not None and remaining <= 0:
        return MilpSolution.failure(NAME, "time_limit", time.perf_counter() - t0, "time limit reached while building")
    configure(h, solver_limit(remaining), threads, verbose, mip_gap)
    deadline = None if time_limit is None else t0 + float(time_limit)
    return run(h, model, t0=t0, start=start, on_incumbent=on_incumbent, deadline=deadline)


class Session:
    """A Highs instance kept across solves; updates are applied in place (no rebuild)."""

    def __init__(self, model: MilpModel, threads: int | None = None, mip_gap: float | None = None):
        self.model = model
        self.h = build(model)
        configure(self.h, None, threads, False, mip_gap)
        self.inf = self.h.getInfinity()
        # HiGHS's LP solver reads a run clock that adds up over the runs of one instance (its MIP
        # solver restarts it per run): an LP gets its limit on top of the time used so far.
        self.clock_adds_up = not model.integrality.any()

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
