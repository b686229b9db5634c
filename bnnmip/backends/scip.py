"""Native SCIP backend (pyscipopt): variables once per column, one linear constraint per CSR row."""

from __future__ import annotations

import math
import time

import numpy as np

from ..milp.backend import Capabilities, SolveOptions
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution
from ..status import SolveStatus
from ..timing import Deadline
from .base import Backend, IncumbentTrace

_STATUS = {
    "optimal": SolveStatus.OPTIMAL,
    "infeasible": SolveStatus.INFEASIBLE,
    "gaplimit": SolveStatus.OPTIMAL,  # stopped at the requested gap: what HiGHS calls optimal too
    **{s: SolveStatus.TIME_LIMIT for s in ("timelimit", "userinterrupt", "sollimit", "bestsollimit", "nodelimit",
                                           "totalnodelimit", "stallnodelimit")},
}


def build(model: MilpModel, verbose: bool = False) -> tuple:
    """A pyscipopt Model holding ``model``, its variables and its constraints, in order.

    pyscipopt has no array interface for linear rows, so each row is one ``Expr`` built from a
    dict of precomputed ``Term`` objects (one per column, shared by every row; the CSR arrays
    become Python lists once).  pyscipopt's own per-row work (``ExprCons``, ``addCons``) is most
    of the time, about 0.6 µs per nonzero; bypassing ``ExprCons`` normalisation or building dicts
    differently measured no faster (benchmarks/milp_build.py times it against CVXPY's routes).
    """
    import pyscipopt  # lazy: a missing solver is a clear SolverError (Backend.require)
    from pyscipopt.scip import Expr, ExprCons, Term

    scip = pyscipopt.Model(model.name)
    scip.hideOutput(not verbose)
    names = model.col_names()
    binary = model.integrality & (model.col_lower >= 0) & (model.col_upper <= 1)
    vtypes = np.where(binary, "B", np.where(model.integrality, "I", "C")).tolist()
    lower, upper = _optional(model.col_lower), _optional(model.col_upper)
    add_var = scip.addVar
    variables = [add_var(n, vtype=t, lb=lo, ub=hi) for n, t, lo, hi in zip(names, vtypes, lower, upper)]
    terms = [Term(v) for v in variables]
    A, row_names = model.A, model.rows_names()
    indptr, data = A.indptr.tolist(), A.data.tolist()
    row_terms = [terms[i] for i in A.indices.tolist()]  # the Term of every nonzero, in CSR order
    add_cons, free = scip.addCons, -scip.infinity()  # a free row (no bound at all) gets lhs = -infinity
    conss = [
        add_cons(ExprCons(Expr(dict(zip(row_terms[a:b], data[a:b]))), lhs=free if lo is None and hi is None else lo,
                          rhs=hi), name=name)
        for a, b, lo, hi, name in zip(indptr[:-1], indptr[1:], _optional(model.row_lower),
                                      _optional(model.row_upper), row_names)
    ]
    nonzero = np.flatnonzero(model.objective)
    scip.setObjective(Expr({terms[i]: float(model.objective[i]) for i in nonzero}),
                      sense="maximize" if model.sense == "max" else "minimize")
    if model.objective_offset:
        scip.addObjoffset(float(model.objective_offset))
    return scip, variables, conss


def _optional(values: np.ndarray) -> list:
    """Floats, with None for an infinite bound (pyscipopt's spelling of 'no bound')."""
    return [v if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def _incumbent_handler(variables: list, trace: IncumbentTrace):
    """A SCIP event handler that records every new best solution into ``trace`` and may interrupt;
    when ``trace`` has a progress callback, it also reports the bounds after every solved node."""
    from pyscipopt import SCIP_EVENTTYPE, Eventhdlr

    class Incumbents(Eventhdlr):
        def eventinit(self):
            self.events = SCIP_EVENTTYPE.BESTSOLFOUND
            if self.trace.on_progress is not None:
                self.events |= SCIP_EVENTTYPE.NODESOLVED
            self.model.catchEvent(self.events, self)

        def eventexit(self):
            self.model.dropEvent(self.events, self)

        def eventexec(self, event):
            if event.getType() != SCIP_EVENTTYPE.BESTSOLFOUND:
                self.trace.progress(self.model.getPrimalbound(), self.model.getDualbound())
                return
            sol = self.model.getBestSol()
            values = lambda: [self.model.getSolVal(sol, v) for v in variables]  # noqa: E731 (only if asked)
            if self.trace.record(self.model.getSolObjVal(sol), values):
                self.model.interruptSolve()

    handler = Incumbents()
    handler.trace = trace
    return handler


def configure(scip, time_limit: float | None, threads: int | None, verbose: bool,
              mip_gap: float | None = None) -> None:
    scip.hideOutput(not verbose)
    scip.setParam("limits/time", float(time_limit) if time_limit else 1e20)
    scip.setParam("limits/gap", 0.0 if mip_gap is None else float(mip_gap))
    scip.setParam("limits/absgap", 1e-9)


def run(scip, variables: list, model: MilpModel, *, t0: float, start=None, on_incumbent=None,
        handler=None, on_progress=None) -> MilpSolution:
    trace = IncumbentTrace(t0, on_incumbent, on_progress)
    if handler is None:
        handler = _incumbent_handler(variables, trace)
        scip.includeEventhdlr(handler, "bnnmip_incumbents", "records incumbents")
    handler.trace = trace
    if start is not None:
        sol = scip.createSol()
        for var, value in zip(variables, np.asarray(start, np.float64).tolist()):
            scip.setSolVal(sol, var, value)
        scip.addSol(sol, free=True)
    scip.optimize()
    elapsed = time.perf_counter() - t0
    raw = scip.getStatus()
    status = _STATUS.get(raw, SolveStatus.ERROR)
    points = tuple(trace.points)
    bound = _optional_float(scip.getDualbound()) if status in (SolveStatus.OPTIMAL, SolveStatus.TIME_LIMIT) else None
    if status == SolveStatus.ERROR:
        return MilpSolution.failure(ScipBackend.name, SolveStatus.ERROR, elapsed, f"SCIP status {raw!r}")
    if scip.getNSols() == 0 or status == SolveStatus.INFEASIBLE:
        return MilpSolution(status, None, None, bound, None, elapsed, ScipBackend.name, trace=points)
    best = scip.getBestSol()
    values = np.array([scip.getSolVal(best, v) for v in variables])
    status = SolveStatus.OPTIMAL if status == SolveStatus.OPTIMAL else SolveStatus.FEASIBLE
    return MilpSolution.found(ScipBackend.name, status, values, float(scip.getSolObjVal(best)), bound, elapsed,
                              trace=points)


def _optional_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class ScipBackend(Backend):
    """SCIP through pyscipopt: warm starts, incumbent callbacks, in-place sessions; one thread."""

    name = "scip"
    title = "SCIP"
    package = "pyscipopt"
    capabilities = Capabilities(warm_start=True, incumbent_callback=True, progress=True, in_place_session=True,
                                lp=True)

    def _build(self, model: MilpModel, options: SolveOptions, deadline: Deadline):
        return build(model, options.verbose)

    def native(self, model: MilpModel):
        return super().native(model)[0]

    def _configure(self, native, deadline: Deadline, options: SolveOptions) -> None:
        configure(native[0], deadline.seconds_left(), options.threads, options.verbose, options.mip_gap)

    def _run(self, native, model: MilpModel, deadline: Deadline, options: SolveOptions) -> MilpSolution:
        scip, variables, _ = native
        return run(scip, variables, model, t0=deadline.t0, start=options.start, on_incumbent=options.on_incumbent,
                   on_progress=options.on_progress)

    def _session(self, model: MilpModel, threads: int | None, mip_gap: float | None) -> ScipSession:
        return ScipSession(model, threads, mip_gap)


class ScipSession:
    """A SCIP model kept across solves; updates go in place after freeing the transformed problem."""

    def __init__(self, model: MilpModel, threads: int | None = None, mip_gap: float | None = None):
        self.model = model
        self.scip, self.vars, self.conss = build(model)
        configure(self.scip, None, threads, False, mip_gap)
        self.objective = np.array(model.objective, np.float64)
        self.solved = False
        self.handler = _incumbent_handler(self.vars, IncumbentTrace(time.perf_counter()))
        self.scip.includeEventhdlr(self.handler, "bnnmip_incumbents", "records incumbents")

    def _editable(self) -> None:
        if self.solved:
            self.scip.freeTransform()
            self.solved = False

    def set_col_bounds(self, cols, lower, upper) -> None:
        self._editable()
        for c, lo, hi in zip(np.asarray(cols).tolist(), np.asarray(lower).tolist(), np.asarray(upper).tolist()):
            self.scip.chgVarLb(self.vars[c], _optional_float(lo))
            self.scip.chgVarUb(self.vars[c], _optional_float(hi))

    def set_objective(self, cols, costs) -> None:
        from pyscipopt.scip import Expr, Term

        self._editable()
        self.objective[np.asarray(cols, np.int64)] = costs
        nonzero = np.flatnonzero(self.objective)
        self.scip.setObjective(Expr({Term(self.vars[i]): float(self.objective[i]) for i in nonzero}),
                               sense="maximize" if self.model.sense == "max" else "minimize")
        if self.model.objective_offset:
            self.scip.addObjoffset(float(self.model.objective_offset))

    def set_row_bounds(self, rows, lower, upper) -> None:
        self._editable()
        for r, lo, hi in zip(np.asarray(rows).tolist(), np.asarray(lower).tolist(), np.asarray(upper).tolist()):
            self.scip.chgLhs(self.conss[r], _optional_float(lo))
            self.scip.chgRhs(self.conss[r], _optional_float(hi))

    def set_entries(self, rows, cols, values) -> None:
        self._editable()
        for r, c, v in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(),
                           np.asarray(values, np.float64).tolist()):
            self.scip.chgCoefLinear(self.conss[r], self.vars[c], v)

    def solve(self, time_limit: float | None = None, start=None) -> MilpSolution:
        self._editable()
        self.scip.setParam("limits/time", float(time_limit) if time_limit else 1e20)
        self.solved = True
        return run(self.scip, self.vars, self.model, t0=time.perf_counter(), start=start, handler=self.handler)
