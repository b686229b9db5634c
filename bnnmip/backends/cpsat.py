"""CP-SAT backend (OR-Tools): integer models with the big-M rows turned back into reified constraints.

CP-SAT reasons exactly over integers, so it takes only models whose columns are integer and whose
coefficients and bounds are integers (on the 8-bit grid with ±1 first-layer weights, after input
binarization, and on every ±1 layer); anything else is refused with the reason.  The objective may
be real (CP-SAT scales it; its bound is then as exact as that scaling).

Rows that carry :class:`~bnnmip.milp.model.RowIndicators` (every unit row of an attack MILP) are
given to CP-SAT without their big-M term, enforced by the unit's literal (``OnlyEnforceIf``): the
same constraint on every 0/1 value of the binary, and far better propagation.  The model is written
straight into CP-SAT's protocol buffer from the CSR arrays (no per-coefficient Python objects).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import InvalidArgumentError
from ..milp.backend import Capabilities, SolveOptions
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution
from ..status import SolveStatus
from ..timing import Deadline
from .base import Backend, IncumbentTrace

_INT_MIN, _INT_MAX = -(2**62), 2**62  # CP-SAT's domains are int64; keep sums clear of overflow


def _cp_model():
    from ortools.sat.python import cp_model  # lazy: a missing package is a clear SolverError (Backend.require)

    return cp_model


def _int(values: np.ndarray) -> list[int]:
    """Finite integer-valued floats as Python ints, infinities clamped to CP-SAT's range."""
    return np.clip(np.asarray(values, np.float64), _INT_MIN, _INT_MAX).astype(np.int64).tolist()


class CpModelBuild:
    """A CP-SAT model of a :class:`MilpModel`: the model, and where each row's pieces sit in its proto."""

    def __init__(self, model: MilpModel):
        if not np.all(np.isfinite(model.col_lower)) or not np.all(np.isfinite(model.col_upper)):
            raise InvalidArgumentError("backend='cpsat' needs finite bounds on every column")
        self.model = model
        self.cp = _cp_model().CpModel()
        proto = self.cp.proto
        for lo, hi in zip(_int(np.ceil(model.col_lower)), _int(np.floor(model.col_upper))):
            proto.variables.add().domain.extend([lo, hi])
        A = model.A.tocsr()
        A.sort_indices()
        self.indptr, self.indices, self.data = A.indptr, A.indices, A.data
        ind = model.indicators
        self.enforce_col = ind.col if ind is not None else np.full(model.num_rows, -1, np.int64)
        self.enforce_val = ind.value if ind is not None else np.zeros(model.num_rows, np.int8)
        self.row_lower, self.row_upper = model.row_lower.copy(), model.row_upper.copy()
        for r in range(model.num_rows):
            self._add_row(proto.constraints.add(), r)
        self.objective = np.asarray(model.objective, np.float64).copy()
        self._set_objective()

    def _row_parts(self, r: int) -> tuple[list[int], list[int], int, int, int | None]:
        """(vars, coeffs, lower, upper, enforcement literal) of row ``r`` (the big-M term removed)."""
        a, b = self.indptr[r], self.indptr[r + 1]
        cols, vals = self.indices[a:b], self.data[a:b]
        lo, hi, col = self.row_lower[r], self.row_upper[r], int(self.enforce_col[r])
        literal = None
        if col >= 0:
            big_m = float(vals[cols == col].sum())
            keep = cols != col
            cols, vals = cols[keep], vals[keep]
            if self.enforce_val[r]:  # holds when the binary is 1: move its coefficient to the bounds
                lo, hi, literal = lo - big_m, hi - big_m, col
            else:
                literal = -col - 1  # CP-SAT's negated literal
        return cols.tolist(), _int(vals), _int([np.ceil(lo)])[0], _int([np.floor(hi)])[0], literal

    def _add_row(self, ct, r: int) -> None:
        cols, coeffs, lo, hi, literal = self._row_parts(r)
        ct.linear.vars.extend(cols)
        ct.linear.coeffs.extend(coeffs)
        ct.linear.domain.extend([lo, hi])
        if literal is not None:
            ct.enforcement_literal.append(literal)

    def rewrite_row(self, r: int) -> None:
        """Write row ``r`` again from the current arrays (after an in-place change)."""
        ct = self.cp.proto.constraints[r]
        ct.clear_linear()
        ct.enforcement_literal.clear()
        self._add_row(ct, r)

    def _set_objective(self) -> None:
        cp_model = _cp_model()
        nz = np.flatnonzero(self.objective)
        if not len(nz):
            self.cp.clear_objective()
            return
        variables = [self.cp.get_int_var_from_proto_index(int(i)) for i in nz]
        coeffs = self.objective[nz]
        integral = bool(np.all(coeffs == np.rint(coeffs))) and self.model.objective_offset == int(
            self.model.objective_offset)
        weights = coeffs.astype(np.int64).tolist() if integral else coeffs.tolist()
        expr = cp_model.LinearExpr.weighted_sum(variables, weights) + self.model.objective_offset
        (self.cp.maximize if self.model.sense == "max" else self.cp.minimize)(expr)

    def set_objective(self, cols, costs) -> None:
        self.objective[np.asarray(cols, np.int64)] = costs
        self._set_objective()

    def hint(self, start: np.ndarray | None) -> None:
        proto = self.cp.proto
        proto.clear_solution_hint()
        if start is not None:
            proto.solution_hint.vars.extend(range(self.model.num_cols))
            proto.solution_hint.values.extend(_int(np.rint(start)))


def _status_map() -> dict:
    cp_model = _cp_model()
    return {cp_model.OPTIMAL: SolveStatus.OPTIMAL, cp_model.FEASIBLE: SolveStatus.FEASIBLE,
            cp_model.INFEASIBLE: SolveStatus.INFEASIBLE, cp_model.UNKNOWN: SolveStatus.TIME_LIMIT,
            cp_model.MODEL_INVALID: SolveStatus.ERROR}


def run(build: CpModelBuild, *, t0: float, time_limit: float | None, threads: int | None, verbose: bool = False,
        start=None, on_incumbent=None, mip_gap: float | None = None) -> MilpSolution:
    """Solve a :class:`CpModelBuild` with CP-SAT and read its outcome into a :class:`MilpSolution`."""
    cp_model = _cp_model()
    build.hint(start)
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.num_workers = int(threads or 1)  # one thread unless asked: the same budget as the other backends
    params.log_search_progress = bool(verbose)
    if time_limit is not None:
        params.max_time_in_seconds = max(float(time_limit), 1e-3)
    # Closed gaps, as on the other backends: CP-SAT's default absolute gap (1e-4) called incumbents optimal
    # with a dual bound 1e-4 above them, which left tiny robust margins uncertified.
    params.relative_gap_limit = 1e-9 if mip_gap is None else float(mip_gap)
    params.absolute_gap_limit = 1e-9
    trace = IncumbentTrace(t0, on_incumbent)

    class Incumbents(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self):
            values = lambda: np.asarray(self.response_proto.solution, np.float64)  # noqa: E731 (only if asked)
            objective = self.objective_value if build.model.objective.any() else build.model.objective_offset
            if trace.record(objective, values):
                self.stop_search()

    status = _status_map().get(solver.solve(build.cp, Incumbents()), SolveStatus.ERROR)
    outcome = _outcome(solver, build.model, status, time.perf_counter() - t0, tuple(trace.points))
    if status == SolveStatus.TIME_LIMIT and start is not None:
        return _start_as_incumbent(build.model, np.rint(np.asarray(start, np.float64)), outcome)
    return outcome


def _start_as_incumbent(model: MilpModel, start: np.ndarray, outcome: MilpSolution) -> MilpSolution:
    """CP-SAT takes a start as a hint, which it may not turn into a solution before its limit (presolve
    alone can use it up); a feasible start is an incumbent all the same, as on every backend that
    declares ``warm_start``."""
    if start.shape != (model.num_cols,) or model.violation(start) > 1e-9:
        return outcome
    return MilpSolution.found(outcome.backend, SolveStatus.FEASIBLE, start, model.evaluate(start), None, outcome.time,
                              "the start: CP-SAT found no solution before its limit", outcome.trace)


def _outcome(solver, model: MilpModel, status: SolveStatus, elapsed: float, trace: tuple) -> MilpSolution:
    name = CpSatBackend.name
    if status == SolveStatus.ERROR:
        return MilpSolution.failure(name, status, elapsed, "CP-SAT: model invalid")
    if status in (SolveStatus.INFEASIBLE, SolveStatus.TIME_LIMIT):
        return MilpSolution(status, None, None, None, None, elapsed, name, trace=trace)
    values = np.asarray(solver.response_proto.solution, np.float64)
    objective = model.evaluate(values)
    bound = float(solver.best_objective_bound) if model.objective.any() else objective
    return MilpSolution.found(name, status, values, objective, bound, elapsed, trace=trace)


class CpSatBackend(Backend):
    """OR-Tools CP-SAT: integer models only, reified unit rows, hints, incumbents, threads, sessions."""

    name = "cpsat"
    title = "CP-SAT"
    package = "ortools"
    capabilities = Capabilities(warm_start=True, incumbent_callback=True, in_place_session=True, threads=True,
                                lp=False, integer_only=True)

    def _build(self, model: MilpModel, options: SolveOptions, deadline: Deadline) -> CpModelBuild:
        return CpModelBuild(model)

    def native(self, model: MilpModel):
        """A ``cp_model.CpModel`` holding ``model`` (unit rows as enforced constraints)."""
        self.require()
        self.check(model, SolveOptions())
        return CpModelBuild(model).cp

    def _configure(self, native: CpModelBuild, deadline: Deadline, options: SolveOptions) -> None:
        pass  # CP-SAT's parameters belong to the solver object, set in run()

    def _run(self, native: CpModelBuild, model: MilpModel, deadline: Deadline, options: SolveOptions) -> MilpSolution:
        return run(native, t0=deadline.t0, time_limit=deadline.seconds_left(), threads=options.threads,
                   verbose=options.verbose, start=options.start, on_incumbent=options.on_incumbent,
                   mip_gap=options.mip_gap)

    def _session(self, model: MilpModel, threads: int | None, mip_gap: float | None) -> CpSatSession:
        return CpSatSession(model, threads, mip_gap)


class CpSatSession:
    """A CP-SAT model kept across solves; bounds, costs and coefficients change in its proto."""

    def __init__(self, model: MilpModel, threads: int | None = None, mip_gap: float | None = None):
        self.build = CpModelBuild(model)
        self.threads, self.mip_gap = threads, mip_gap
        self.data = self.build.data  # CSR values, edited by set_entries

    def set_col_bounds(self, cols, lower, upper) -> None:
        variables = self.build.cp.proto.variables
        for c, lo, hi in zip(np.asarray(cols).tolist(), _int(np.ceil(lower)), _int(np.floor(upper))):
            domain = variables[c].domain
            domain.clear()
            domain.extend([lo, hi])

    def set_objective(self, cols, costs) -> None:
        self.build.set_objective(cols, costs)

    def set_row_bounds(self, rows, lower, upper) -> None:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        self.build.row_lower[rows] = np.broadcast_to(lower, rows.shape)
        self.build.row_upper[rows] = np.broadcast_to(upper, rows.shape)
        for r in rows.tolist():
            self.build.rewrite_row(r)

    def set_entries(self, rows, cols, values) -> None:
        rows, cols = np.atleast_1d(np.asarray(rows, np.int64)), np.atleast_1d(np.asarray(cols, np.int64))
        rows = np.broadcast_to(rows, cols.shape)
        indptr, indices = self.build.indptr, self.build.indices
        for r, c, v in zip(rows.tolist(), cols.tolist(), np.broadcast_to(values, cols.shape).tolist()):
            pos = indptr[r] + np.searchsorted(indices[indptr[r]:indptr[r + 1]], c)
            if pos >= indptr[r + 1] or indices[pos] != c:
                raise InvalidArgumentError(f"set_entries: ({r}, {c}) is not an entry of the matrix")
            self.data[pos] = v
        for r in np.unique(rows).tolist():
            self.build.rewrite_row(r)

    def solve(self, time_limit: float | None = None, start=None) -> MilpSolution:
        return run(self.build, t0=time.perf_counter(), time_limit=time_limit, threads=self.threads, start=start,
                   mip_gap=self.mip_gap)
