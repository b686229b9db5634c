"""CVXPY backend: the model as a ``cvxpy.Problem`` over one vector variable, for users who add
their own constraints; ``solver=`` picks any MILP-capable CVXPY solver (HIGHS by default)."""

from __future__ import annotations

import time

import cvxpy as cp
import numpy as np

from ..errors import InvalidArgumentError, SolverError
from ..milp.model import MilpModel, MilpSolution, relative_gap

NAME = "cvxpy"

# Solver options: the same closed gap as the native backends, and the time limit when given.
_OPTIONS = {
    "HIGHS": lambda t, gap: {"mip_rel_gap": gap, "mip_abs_gap": 1e-9, **({"time_limit": t} if t else {})},
    "SCIP": lambda t, gap: {"scip_params": {"limits/gap": gap, "limits/absgap": 1e-9,
                                            **({"limits/time": t} if t else {})}},
}


def build(model: MilpModel) -> tuple[cp.Problem, cp.Variable]:
    """``(problem, x)`` where ``x[i]`` is column ``i`` of ``model``."""
    integer = np.flatnonzero(model.integrality)
    x = cp.Variable(model.num_cols, name="x", integer=[(int(i),) for i in integer] if len(integer) else False)
    constraints = []
    for values, op in ((model.col_lower, "ge"), (model.col_upper, "le")):
        idx = np.flatnonzero(np.isfinite(values))
        if len(idx):
            constraints.append(x[idx] >= values[idx] if op == "ge" else x[idx] <= values[idx])
    equal = model.row_lower == model.row_upper
    for rows, make in (
        (np.flatnonzero(equal), lambda A, r: A @ x == model.row_lower[r]),
        (np.flatnonzero(~equal & np.isfinite(model.row_lower)), lambda A, r: A @ x >= model.row_lower[r]),
        (np.flatnonzero(~equal & np.isfinite(model.row_upper)), lambda A, r: A @ x <= model.row_upper[r]),
    ):
        if len(rows):
            constraints.append(make(model.A[rows], rows))
    objective = model.objective @ x + model.objective_offset
    goal = cp.Maximize(objective) if model.sense == "max" else cp.Minimize(objective)
    return cp.Problem(goal, constraints), x


def _bound(problem: cp.Problem, solver: str, status: str, objective: float | None) -> float | None:
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    if solver == "SCIP" and isinstance(stats, dict) and "model" in stats:
        value = stats["model"].getDualbound()
        return float(value) if np.isfinite(value) else None
    if solver == "HIGHS" and stats is not None and hasattr(stats, "mip_dual_bound"):
        value = float(stats.mip_dual_bound)
        return value if np.isfinite(value) and abs(value) < 1e30 else None
    return objective if status == "optimal" else None


def _proved_optimal(problem: cp.Problem, solver: str) -> bool:
    """CVXPY says 'optimal' for some solvers' limits; read the solver's own status where we can."""
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    if solver == "SCIP" and isinstance(stats, dict):
        return stats.get("scip_status") == "optimal"
    return True


def solve(model: MilpModel, *, time_limit=None, threads=None, verbose=False, solver=None, start=None,
          on_incumbent=None, t0: float, mip_gap=None) -> MilpSolution:
    solver = (solver or "HIGHS").upper()
    if solver not in cp.installed_solvers():
        raise SolverError(f"solver={solver!r}: not a CVXPY solver installed here ({cp.installed_solvers()})")
    problem, x = build(model)
    gap = 1e-9 if mip_gap is None else float(mip_gap)
    options = _OPTIONS[solver](float(time_limit) if time_limit else None, gap) if solver in _OPTIONS else {}
    if time_limit and solver not in _OPTIONS:
        raise InvalidArgumentError(f"solver={solver!r}: bnnmip cannot pass a time limit to it through CVXPY")
    try:
        problem.solve(solver=solver, verbose=verbose, **options)
    except cp.error.SolverError as e:
        return MilpSolution.failure(NAME, "error", time.perf_counter() - t0, f"CVXPY/{solver}: {e}")
    elapsed = time.perf_counter() - t0
    raw = problem.status
    if raw in ("infeasible", "infeasible_inaccurate"):
        return MilpSolution.failure(NAME, "infeasible", elapsed, f"CVXPY/{solver}: {raw}")
    if x.value is None:
        status = "time_limit" if raw in ("user_limit", "optimal_inaccurate") else "error"
        return MilpSolution.failure(NAME, status, elapsed, f"CVXPY/{solver}: {raw}")
    values = np.asarray(x.value, np.float64)
    objective = model.evaluate(values)
    # A time-limited incumbent is never reported as optimal ('optimal_inaccurate' is a limit).
    optimal = raw == "optimal" and _proved_optimal(problem, solver)
    status = "optimal" if optimal else "feasible"
    bound = _bound(problem, solver, status, objective)
    return MilpSolution(status, values, objective, bound, relative_gap(objective, bound), elapsed,
                        f"{NAME}/{solver}", message=f"CVXPY status {raw}")
