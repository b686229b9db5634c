"""Native SCIP backend (pyscipopt): variables once per column, one linear constraint per CSR row."""

from __future__ import annotations

import math
import time

import numpy as np
import pyscipopt
from pyscipopt import SCIP_EVENTTYPE, Eventhdlr
from pyscipopt.scip import Expr, ExprCons, Term

from ..milp.model import MilpModel, MilpSolution, relative_gap, remaining_time

NAME = "scip"
_STATUS = {
    "optimal": "optimal",
    "infeasible": "infeasible",
    "timelimit": "time_limit",
    "userinterrupt": "time_limit",
    "gaplimit": "optimal",  # stopped at the requested gap: what HiGHS calls optimal too
    "sollimit": "time_limit",
    "bestsollimit": "time_limit",
    "nodelimit": "time_limit",
    "totalnodelimit": "time_limit",
    "stallnodelimit": "time_limit",
}


def _bound(value: float, model: pyscipopt.Model):
    return None if not np.isfinite(value) else float(value)


def build(model: MilpModel, verbose: bool = False) -> tuple[pyscipopt.Model, list, list]:
    """A pyscipopt Model holding ``model``, its variables and its constraints, in order.

    pyscipopt has no array interface for linear rows, so each row is one ``Expr`` built from a
    dict of precomputed ``Term`` objects (one per column, shared by every row; the CSR arrays
    become Python lists once).  pyscipopt's own per-row work (``ExprCons``, ``addCons``) is most
    of the time, about 0.6 µs per nonzero; bypassing ``ExprCons`` normalisation or building dicts
    differently measured no faster (benchmarks/milp_build.py times it against CVXPY's routes).
    """
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


class _Incumbents(Eventhdlr):
    """Records every new best solution; may interrupt the solve."""

    def __init__(self, variables, t0, on_incumbent):
        self.variables, self.t0, self.on_incumbent = variables, t0, on_incumbent
        self.trace = []

    def eventinit(self):
        self.model.catchEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)

    def eventexit(self):
        self.model.dropEvent(SCIP_EVENTTYPE.BESTSOLFOUND, self)

    def eventexec(self, event):
        sol = self.model.getBestSol()
        objective = float(self.model.getSolObjVal(sol))
        self.trace.append((time.perf_counter() - self.t0, objective))
        if self.on_incumbent is not None:
            values = np.array([self.model.getSolVal(sol, v) for v in self.variables])
            if self.on_incumbent(values, objective):
                self.model.interruptSolve()


def configure(scip: pyscipopt.Model, time_limit: float | None, threads: int | None, verbose: bool,
              mip_gap: float | None = None) -> None:
    scip.hideOutput(not verbose)
    scip.setParam("limits/time", float(time_limit) if time_limit else 1e20)
    scip.setParam("limits/gap", 0.0 if mip_gap is None else float(mip_gap))
    scip.setParam("limits/absgap", 1e-9)


def run(scip: pyscipopt.Model, variables: list, model: MilpModel, *, t0: float, start=None,
        on_incumbent=None, handler: _Incumbents | None = None) -> MilpSolution:
    if handler is None:
        handler = _Incumbents(variables, t0, on_incumbent)
        scip.includeEventhdlr(handler, "bnnmip_incumbents", "records incumbents")
    handler.t0, handler.on_incumbent, handler.trace = t0, on_incumbent, []
    if start is not None:
        sol = scip.createSol()
        for var, value in zip(variables, np.asarray(start, np.float64).tolist()):
            scip.setSolVal(sol, var, value)
        scip.addSol(sol, free=True)
    scip.optimize()
    elapsed = time.perf_counter() - t0
    raw = scip.getStatus()
    status = _STATUS.get(raw, "error")
    bound = _bound(scip.getDualbound(), scip) if status in ("optimal", "time_limit") else None
    if status == "error":
        return MilpSolution.failure(NAME, "error", elapsed, f"SCIP status {raw!r}")
    if scip.getNSols() == 0 or status == "infeasible":
        return MilpSolution(status, None, None, bound, None, elapsed, NAME, trace=tuple(handler.trace))
    best = scip.getBestSol()
    values = np.array([scip.getSolVal(best, v) for v in variables])
    objective = float(scip.getSolObjVal(best))
    return MilpSolution("optimal" if status == "optimal" else "feasible", values, objective, bound,
                        relative_gap(objective, bound), elapsed, NAME, trace=tuple(handler.trace))


def solve(model: MilpModel, *, time_limit=None, threads=None, verbose=False, solver=None, start=None,
          on_incumbent=None, t0: float, mip_gap=None) -> MilpSolution:
    scip, variables, _ = build(model, verbose)
    remaining = remaining_time(time_limit, t0)
    if remaining is not None and remaining <= 0:
        return MilpSolution.failure(NAME, "time_limit", time.perf_counter() - t0, "time limit reached while building")
    configure(scip, remaining, threads, verbose, mip_gap)
    return run(scip, variables, model, t0=t0, start=start, on_incumbent=on_incumbent)


def _opt(value: float):
    return float(value) if np.isfinite(value) else None


class Session:
    """A SCIP model kept across solves; updates go in place after freeing the transformed problem."""

    def __init__(self, model: MilpModel, threads: int | None = None, mip_gap: float | None = None):
        self.model = model
        self.scip, self.vars, self.conss = build(model)
        configure(self.scip, None, threads, False, mip_gap)
        self.objective = np.array(model.objective, np.float64)
        self.solved = False
        self.handler = _Incumbents(self.vars, time.perf_counter(), None)
        self.scip.includeEventhdlr(self.handler, "bnnmip_incumbents", "records incumbents")

    def _editable(self) -> None:
        if self.solved:
            self.scip.freeTransform()
            self.solved = False

    def set_col_bounds(self, cols, lower, upper) -> None:
        self._editable()
        for c, lo, hi in zip(np.asarray(cols).tolist(), np.asarray(lower).tolist(), np.asarray(upper).tolist()):
            self.scip.chgVarLb(self.vars[c], _opt(lo))
            self.scip.chgVarUb(self.vars[c], _opt(hi))

    def set_objective(self, cols, costs) -> None:
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
            self.scip.chgLhs(self.conss[r], _opt(lo))
            self.scip.chgRhs(self.conss[r], _opt(hi))

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
