"""CVXPY backend: the model as a ``cvxpy.Problem`` over one vector variable, for users who add
their own constraints; ``solver=`` picks any MILP-capable CVXPY solver (HIGHS by default)."""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np
from cvxpy.reductions.solvers.conic_solvers.scip_conif import SCIP

from ..errors import InvalidArgumentError, SolverError
from ..milp.model import MilpModel, MilpSolution, relative_gap, remaining_time

NAME = "cvxpy"

# Solver options: the same closed gap as the native backends, and the time limit when given.
_OPTIONS = {
    "HIGHS": lambda t, gap: {"mip_rel_gap": gap, "mip_abs_gap": 1e-9, **({"time_limit": t} if t else {})},
    "SCIP": lambda t, gap: {"scip_params": {"limits/gap": gap, "limits/absgap": 1e-9,
                                            **({"limits/time": t} if t else {})}},
}


class _DeadlineSCIP(SCIP):
    """CVXPY's own SCIP interface, with the time limit set once that interface has built its model.

    CVXPY builds the SCIP model entry by entry (seconds for large models), and SCIP's clock starts
    only when it solves, so a limit fixed in advance would overrun by the build time.
    """

    def __init__(self, deadline: float | None):
        super().__init__()
        self.deadline = deadline

    def name(self) -> str:
        return "BNNMIP_SCIP"  # CVXPY requires custom solvers to have their own name

    def _set_params(self, model, verbose, solver_opts, data, dims) -> None:
        super()._set_params(model, verbose, solver_opts, data, dims)
        if self.deadline is not None:
            model.setParam("limits/time", max(self.deadline - time.perf_counter(), 0.0))


def build(model: MilpModel) -> tuple[cp.Problem, cp.Variable]:
    """``(problem, x)`` where ``x[i]`` is column ``i`` of ``model``.

    Column bounds are the variable's ``bounds`` attribute (solvers that take variable bounds get
    them as such); rows are at most three sparse matrix constraints (equal, >=, <=).
    """
    integer = np.flatnonzero(model.integrality)
    if len(integer) == model.num_cols and model.num_cols:
        kind = True
    else:
        kind = (integer,) if len(integer) else False
    x = cp.Variable(model.num_cols, name="x", integer=kind,
                    bounds=[np.asarray(model.col_lower, np.float64), np.asarray(model.col_upper, np.float64)])
    constraints = []
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
    """The solver's dual bound, in the model's own sense and with its constant.

    CVXPY hands every solver a minimisation (a maximisation is negated) without the constant, so
    the solver's bound is translated through its gap: ``bound = objective ± (primal - dual)``.
    """
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    primal = dual = None
    if solver == "SCIP" and isinstance(stats, dict) and "model" in stats:
        scip = stats["model"]
        if scip.getNSols() > 0:
            primal, dual = scip.getPrimalbound(), scip.getDualbound()
    elif solver == "HIGHS" and stats is not None and hasattr(stats, "mip_dual_bound"):
        primal, dual = stats.objective_function_value, stats.mip_dual_bound
    if primal is None or objective is None:
        return objective if status == "optimal" else None
    gap = float(primal) - float(dual)  # >= 0: the internal problem is a minimisation
    if not np.isfinite(gap) or abs(float(dual)) >= 1e19:  # no bound (or an LP, whose optimum is its bound)
        return objective if status == "optimal" else None
    sense = 1.0 if problem.objective.NAME == "maximize" else -1.0
    return objective + sense * max(gap, 0.0)


def _has_incumbent(problem: cp.Problem, solver: str, model: MilpModel, values) -> bool:
    """Whether CVXPY's values are a solution: at HiGHS's limit CVXPY passes on whatever vector HiGHS
    holds, feasible or not."""
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    if solver == "HIGHS" and stats is not None and hasattr(stats, "primal_solution_status"):
        if int(stats.primal_solution_status) != 2:  # kSolutionStatusFeasible
            return False
    scale = (1.0 + float(np.abs(np.asarray(values, np.float64)).max(initial=0.0))) * (
        1.0 + float(np.abs(model.A.data).max(initial=0.0)))
    return model.violation(values) <= 1e-6 * scale


def _hit_limit(raw_solution) -> bool:
    """Whether the solver stopped at a limit (CVXPY reports SCIP's limit without a solution as an error)."""
    if isinstance(raw_solution, dict):
        status = raw_solution.get("scip_status", raw_solution.get("model_status"))
        return str(status) in ("timelimit", "userinterrupt", "kTimeLimit", "kInterrupt")
    return False


def _proved_optimal(problem: cp.Problem, solver: str) -> bool:
    """CVXPY says 'optimal' for some solvers' limits; read the solver's own status where we can."""
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    if solver == "SCIP" and isinstance(stats, dict):
        # 'gaplimit': stopped at the requested gap, which the native backends call optimal too.
        return stats.get("scip_status") in ("optimal", "gaplimit")
    return True


def solve(model: MilpModel, *, time_limit=None, threads=None, verbose=False, solver=None, start=None,
          on_incumbent=None, t0: float, mip_gap=None) -> MilpSolution:
    """Build, compile (CVXPY's reductions), then solve with what is left of ``time_limit``."""
    solver = (solver or "HIGHS").upper()
    if solver not in cp.installed_solvers():
        raise SolverError(f"solver={solver!r}: not a CVXPY solver installed here ({cp.installed_solvers()})")
    if time_limit and solver not in _OPTIONS:
        raise InvalidArgumentError(f"solver={solver!r}: bnnmip cannot pass a time limit to it through CVXPY")
    if solver == "HIGHS":
        from .highs import new_highs

        new_highs()  # HiGHS prints its banner on the first instance of a process: let it be ours
    problem, x = build(model)
    deadline = None if time_limit is None else t0 + float(time_limit)
    target = _DeadlineSCIP(deadline) if solver == "SCIP" else solver
    try:
        data, chain, inverse_data = problem.get_problem_data(target, verbose=verbose)
    except cp.error.SolverError as e:
        return MilpSolution.failure(NAME, "error", time.perf_counter() - t0, f"CVXPY/{solver}: {e}")
    remaining = remaining_time(time_limit, t0)
    if remaining is not None and remaining <= 0:
        return MilpSolution.failure(NAME, "time_limit", time.perf_counter() - t0, "time limit reached while compiling")
    gap = 1e-9 if mip_gap is None else float(mip_gap)
    if solver == "HIGHS":
        from .highs import solver_limit

        # HiGHS overshoots its limit (see backends/highs.py) by up to ~1.5 s on a loaded machine, and
        # through CVXPY bnnmip cannot interrupt it from a callback: keep a larger margin.
        remaining = solver_limit(remaining, share=0.6, cap=1.5)
    options = _OPTIONS[solver](remaining, gap) if solver in _OPTIONS else {}
    raw_solution = None
    try:
        raw_solution = chain.solve_via_data(problem, data, False, verbose, options)
        with warnings.catch_warnings():  # 'Solution may be inaccurate': bnnmip reports it as a status
            warnings.simplefilter("ignore", UserWarning)
            problem.unpack_results(raw_solution, chain, inverse_data)
    except cp.error.SolverError as e:
        status = "time_limit" if _hit_limit(raw_solution) else "error"
        return MilpSolution.failure(NAME, status, time.perf_counter() - t0, f"CVXPY/{solver}: {e}")
    elapsed = time.perf_counter() - t0
    raw = problem.status
    if raw in ("infeasible", "infeasible_inaccurate"):
        return MilpSolution.failure(NAME, "infeasible", elapsed, f"CVXPY/{solver}: {raw}")
    if x.value is None or not _has_incumbent(problem, solver, model, x.value):
        status = "time_limit" if raw in ("user_limit", "optimal_inaccurate", "solver_error") else "error"
        return MilpSolution.failure(NAME, status, elapsed, f"CVXPY/{solver}: {raw}")
    values = np.asarray(x.value, np.float64)
    objective = model.evaluate(values)
    # A time-limited incumbent is never reported as optimal ('optimal_inaccurate' is a limit).
    optimal = raw == "optimal" and _proved_optimal(problem, solver)
    if raw == "optimal_inaccurate" and solver == "SCIP":
        optimal = _proved_optimal(problem, solver)
    status = "optimal" if optimal else "feasible"
    bound = _bound(problem, solver, status, objective)
    return MilpSolution(status, values, objective, bound, relative_gap(objective, bound), elapsed,
                        f"{NAME}/{solver}", message=f"CVXPY status {raw}")
