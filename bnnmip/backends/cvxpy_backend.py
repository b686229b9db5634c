"""CVXPY backend: the model as a ``cvxpy.Problem`` over one vector variable, for users who add
their own constraints; ``solver=`` picks any MILP-capable CVXPY solver (HIGHS by default)."""

from __future__ import annotations

import functools
import time
import warnings

import numpy as np

from ..errors import InvalidArgumentError, SolverError
from ..milp.backend import Capabilities, SolveOptions
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution
from ..status import SolveStatus
from ..timing import Deadline
from .base import Backend
from .highs import new_highs, solver_limit

NAME = "cvxpy"

# Solver options: the same closed gap as the native backends, and the time limit when given.
_OPTIONS = {
    "HIGHS": lambda t, gap: {"mip_rel_gap": gap, "mip_abs_gap": 1e-9, **({"time_limit": t} if t else {})},
    "SCIP": lambda t, gap: {"scip_params": {"limits/gap": gap, "limits/absgap": 1e-9,
                                            **({"limits/time": t} if t else {})}},
}


@functools.cache
def _deadline_scip_class():
    """CVXPY's own SCIP interface, with the time limit set once that interface has built its model.

    CVXPY builds the SCIP model entry by entry (seconds for large models), and SCIP's clock starts
    only when it solves, so a limit fixed in advance would overrun by the build time.
    """
    from cvxpy.reductions.solvers.conic_solvers.scip_conif import SCIP

    class DeadlineSCIP(SCIP):
        def __init__(self, deadline: float | None):
            super().__init__()
            self.deadline = deadline

        def name(self) -> str:
            return "BNNMIP_SCIP"  # CVXPY requires custom solvers to have their own name

        def _set_params(self, model, verbose, solver_opts, data, dims) -> None:
            super()._set_params(model, verbose, solver_opts, data, dims)
            if self.deadline is not None:
                model.setParam("limits/time", max(self.deadline - time.perf_counter(), 0.0))

    return DeadlineSCIP


def build(model: MilpModel) -> tuple:
    """``(problem, x)`` where ``x[i]`` is column ``i`` of ``model``.

    Column bounds are the variable's ``bounds`` attribute (solvers that take variable bounds get
    them as such); rows are at most three sparse matrix constraints (equal, >=, <=).
    """
    import cvxpy as cp  # lazy: a missing package is a clear SolverError (Backend.require)

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


def _bound(problem, solver: str, status: str, objective: float | None) -> float | None:
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


def _has_incumbent(problem, solver: str, model: MilpModel, values) -> bool:
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


def _proved_optimal(problem, solver: str) -> bool:
    """CVXPY says 'optimal' for some solvers' limits; read the solver's own status where we can."""
    stats = problem.solver_stats.extra_stats if problem.solver_stats else None
    if solver == "SCIP" and isinstance(stats, dict):
        # 'gaplimit': stopped at the requested gap, which the native backends call optimal too.
        return stats.get("scip_status") in ("optimal", "gaplimit")
    return True


class CvxpyBackend(Backend):
    """The model as a ``cvxpy.Problem`` (``solver=`` picks HIGHS, the default, SCIP or another MILP solver).

    Through CVXPY bnnmip cannot pass a warm start, receive incumbents or choose threads: those
    options are refused.
    """

    name = NAME
    title = "CVXPY"
    package = "cvxpy"
    capabilities = Capabilities(lp=True, solver_choice=True)

    def native(self, model: MilpModel):
        self.require()
        return build(model)

    def _build(self, model: MilpModel, options: SolveOptions, deadline: Deadline) -> _Compiled:
        import cvxpy as cp

        solver = (options.solver or "HIGHS").upper()
        if solver not in cp.installed_solvers():
            raise SolverError(f"solver={solver!r}: not a CVXPY solver installed here ({cp.installed_solvers()})")
        if deadline.limited and solver not in _OPTIONS:
            raise InvalidArgumentError(f"solver={solver!r}: bnnmip cannot pass a time limit to it through CVXPY")
        if solver == "HIGHS":
            new_highs()  # HiGHS prints its banner on the first instance of a process: let it be ours
        problem, x = build(model)
        target = _deadline_scip_class()(deadline.end if deadline.limited else None) if solver == "SCIP" else solver
        try:
            data, chain, inverse_data = problem.get_problem_data(target, verbose=options.verbose)
        except cp.error.SolverError as e:
            return _Compiled(solver, problem, x, error=f"CVXPY/{solver}: {e}")
        return _Compiled(solver, problem, x, data, chain, inverse_data)

    def _configure(self, native: _Compiled, deadline: Deadline, options: SolveOptions) -> None:
        remaining = deadline.seconds_left()
        if native.solver == "HIGHS":
            # HiGHS overshoots its limit (see backends/highs.py) by up to ~1.5 s on a loaded machine, and
            # through CVXPY bnnmip cannot interrupt it from a callback: keep a larger margin.
            remaining = solver_limit(remaining, share=0.6, cap=1.5)
        gap = 1e-9 if options.mip_gap is None else float(options.mip_gap)
        native.options = _OPTIONS[native.solver](remaining, gap) if native.solver in _OPTIONS else {}

    def _run(self, native: _Compiled, model: MilpModel, deadline: Deadline, options: SolveOptions) -> MilpSolution:
        import cvxpy as cp

        if native.error:
            return MilpSolution.failure(NAME, SolveStatus.ERROR, deadline.elapsed(), native.error)
        problem, x, solver = native.problem, native.x, native.solver
        raw_solution = None
        try:
            raw_solution = native.chain.solve_via_data(problem, native.data, False, options.verbose, native.options)
            with warnings.catch_warnings():  # 'Solution may be inaccurate': bnnmip reports it as a status
                warnings.simplefilter("ignore", UserWarning)
                problem.unpack_results(raw_solution, native.chain, native.inverse_data)
        except cp.error.SolverError as e:
            status = SolveStatus.TIME_LIMIT if _hit_limit(raw_solution) else SolveStatus.ERROR
            return MilpSolution.failure(NAME, status, deadline.elapsed(), f"CVXPY/{solver}: {e}")
        return _read(problem, x, solver, model, deadline.elapsed())


class _Compiled:
    """A CVXPY problem compiled for one solver (or the error compiling it gave)."""

    def __init__(self, solver: str, problem, x, data=None, chain=None, inverse_data=None, error: str = ""):
        self.solver, self.problem, self.x = solver, problem, x
        self.data, self.chain, self.inverse_data, self.error = data, chain, inverse_data, error
        self.options: dict = {}


def _read(problem, x, solver: str, model: MilpModel, elapsed: float) -> MilpSolution:
    """The outcome of a CVXPY solve; a time-limited incumbent is never reported as optimal."""
    raw = problem.status
    if raw in ("infeasible", "infeasible_inaccurate"):
        return MilpSolution.failure(NAME, SolveStatus.INFEASIBLE, elapsed, f"CVXPY/{solver}: {raw}")
    if x.value is None or not _has_incumbent(problem, solver, model, x.value):
        limited = raw in ("user_limit", "optimal_inaccurate", "solver_error")
        status = SolveStatus.TIME_LIMIT if limited else SolveStatus.ERROR
        return MilpSolution.failure(NAME, status, elapsed, f"CVXPY/{solver}: {raw}")
    values = np.asarray(x.value, np.float64)
    objective = model.evaluate(values)
    optimal = raw == "optimal" and _proved_optimal(problem, solver)  # 'optimal_inaccurate' is a limit
    if raw == "optimal_inaccurate" and solver == "SCIP":
        optimal = _proved_optimal(problem, solver)
    status = SolveStatus.OPTIMAL if optimal else SolveStatus.FEASIBLE
    bound = _bound(problem, solver, status, objective)
    return MilpSolution.found(f"{NAME}/{solver}", status, values, objective, bound, elapsed,
                              message=f"CVXPY status {raw}")
