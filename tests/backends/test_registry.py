"""The declared backend interface: every registered backend against its capability flags, and the
:class:`~bnnmip.backends.base.Backend` template on a backend registered by the test itself.

Nothing here names a backend except the test's own: a new backend is tested by being registered.
A flag that is set must work; an option whose flag is not set must be refused with a
:class:`~bnnmip.BnnmipError` naming the option, never dropped in silence.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from bnnmip import BnnmipError, Capabilities, InvalidArgumentError, MilpSolution, SolveStatus, attack
from bnnmip.backends import Backend, RebuildSession, backend_names, get_backend, open_session, register_backend
from bnnmip.milp import backend as registry
from tests.helpers import backend_params, backend_routes, hard_attack_milp
from tests.helpers.milp_nets import cached_case, small_model

OPTIMUM = 15.0  # of small_model()

# An option for every flag that gates one: (flag, solve keyword, a value that needs the flag).
GATED = [
    ("threads", "threads", 2),
    ("warm_start", "start", np.array([3.0, 1.0, 1.0])),
    ("incumbent_callback", "on_incumbent", lambda values, objective: None),
    ("solver_choice", "solver", "HIGHS"),  # where the flag is set: a solver of SOLVER_CHOICES
]


def _caps(backend: str) -> Capabilities:
    return get_backend(backend).capabilities


def _model(backend: str):
    """The small model as ``backend`` takes it (integer throughout for an ``integer_only`` one)."""
    return small_model(integer=_caps(backend).integer_only)


def test_the_registry_holds_backends_with_capabilities():
    assert backend_names(), "no backend registered"
    for name in backend_names():
        backend = get_backend(name)
        assert isinstance(backend, Backend)  # the template owns the solve sequence and its time accounting
        assert backend.name == name and isinstance(backend.capabilities, Capabilities) and backend.package
        assert backend.title  # how messages and proofs name the solver
    with pytest.raises(InvalidArgumentError, match="expected one of"):
        get_backend("no-such-backend")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("flag, keyword, value", GATED, ids=[g[0] for g in GATED])
def test_an_option_is_honoured_or_refused(backend, flag, keyword, value):
    """Through ``MilpModel.solve``: optimal with the option where the flag is set, else a BnnmipError."""
    model = _model(backend)
    if getattr(_caps(backend), flag):
        if keyword == "solver":  # a solver this backend offers
            value = next(solver for name, solver in backend_routes("solver_choice") if name == backend)
        solution = model.solve(backend, **{keyword: value})
        assert solution.status == "optimal" and solution.objective == pytest.approx(OPTIMUM, abs=1e-9)
    else:
        with pytest.raises(BnnmipError, match=f"{keyword}: backend {backend!r}"):
            model.solve(backend, **{keyword: value})


@pytest.fixture(scope="module")
def tiny():
    """A tiny grid network, an input and a radius at which its attack is decided in milliseconds."""
    c = cached_case(25)
    return c.net, c.x, (c.min_flip_radius() or c.levels) * c.step


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("flag, keyword, value", [g for g in GATED if g[0] in ("threads", "solver_choice")],
                         ids=["threads", "solver_choice"])
def test_the_milp_attack_passes_options_on_or_refuses_them(tiny, backend, flag, keyword, value):
    """Through ``attack(method='milp')`` (which checks the warm-start and incumbent flags itself)."""
    net, x, eps = tiny
    if getattr(_caps(backend), flag):
        result = attack(net, x, eps, method="milp", backend=backend, time_limit=20, **{keyword: value})
        assert result.status == "adversarial" and result.verified
    else:
        with pytest.raises(BnnmipError, match=f"{keyword}: backend {backend!r}"):
            attack(net, x, eps, method="milp", backend=backend, time_limit=20, **{keyword: value})


@pytest.mark.parametrize("backend", backend_params("threads"))
def test_solves_with_changing_thread_counts_in_one_process(backend):
    """HiGHS keeps one scheduler per process and refused a run with another thread count (status error,
    nothing solved): every MILP after a default-threads solve failed in the benchmarks' workers."""
    model = _model(backend)
    for threads in (None, 1, 2, 1, None):
        solution = model.solve(backend, threads=threads, time_limit=20)
        assert solution.status == "optimal", (threads, solution)


@pytest.mark.parametrize("backend", backend_params("incumbent_callback"))
def test_the_incumbent_callback_sees_feasible_solutions(backend):
    model, seen = _model(backend), []
    solution = model.solve(backend, on_incumbent=lambda values, objective: seen.append((values.copy(), objective)))
    assert solution.status == "optimal" and seen
    for values, objective in seen:
        assert model.violation(values) <= 1e-9 and objective == pytest.approx(model.evaluate(values), abs=1e-9)


@pytest.fixture(scope="module")
def hard_instance():
    return hard_attack_milp()


@pytest.mark.parametrize("backend", backend_params("warm_start"))
def test_a_warm_start_is_used(hard_instance, backend):
    """Stopped long before optimality, a backend with ``warm_start`` still returns the start or better."""
    model, start = hard_instance
    solution = model.solve(backend, time_limit=0.5, start=start)
    assert solution.status == "feasible", solution
    assert model.violation(solution.values) <= 1e-6
    assert solution.objective >= model.evaluate(start) - 1e-9


@pytest.mark.parametrize("backend", backend_params())
def test_sessions_in_place_or_rebuilt(backend):
    """``in_place_session``: ``open_session`` gives the backend's own session; without it, a clear error
    (and ``reuse=False`` works for every backend)."""
    model = _model(backend)
    rebuilt = open_session(model, backend, reuse=False)
    assert isinstance(rebuilt, RebuildSession) and rebuilt.solve().objective == pytest.approx(OPTIMUM, abs=1e-9)
    if _caps(backend).in_place_session:
        session = open_session(model, backend)
        assert not isinstance(session, RebuildSession)
        session.set_col_bounds([0], [0.0], [2.0])  # x <= 2 forces y = z = 1: the optimum is 3*2 + 2 - 1 + 5
        assert session.solve().objective == pytest.approx(12.0, abs=1e-9)
    else:
        with pytest.raises(InvalidArgumentError, match="no in-place session"):
            open_session(model, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_an_lp_is_solved_or_refused(backend):
    relaxed = small_model().relaxed()
    assert not relaxed.integrality.any()
    if _caps(backend).lp:
        solution = relaxed.solve(backend)
        assert solution.status == "optimal" and solution.objective >= OPTIMUM - 1e-9
    else:
        with pytest.raises(BnnmipError, match=f"model: backend {backend!r} does not solve LPs"):
            relaxed.solve(backend)


# ---------------------------------------------------------------------- a backend registered by the test
class ScipyBackend(Backend):
    """``scipy.optimize.milp`` behind the template: all a backend writes is build, configure and run."""

    name = "scipy-test"
    title = "SciPy (test)"
    package = "scipy"
    capabilities = Capabilities(lp=True)

    def __init__(self, build_seconds: float = 0.0, capabilities: Capabilities | None = None):
        self.build_seconds, self.solver_limit = build_seconds, None
        if capabilities is not None:
            self.capabilities = capabilities

    def _build(self, model, options, deadline):
        time.sleep(self.build_seconds)  # a slow build: its time must count against the limit
        sign = -1.0 if model.sense == "max" else 1.0
        return {"c": sign * model.objective, "integrality": model.integrality.astype(int),
                "bounds": Bounds(model.col_lower, model.col_upper),
                "constraints": LinearConstraint(model.A, model.row_lower, model.row_upper)}

    def _configure(self, native, deadline, options):
        self.solver_limit = deadline.seconds_left()
        native["options"] = {} if self.solver_limit is None else {"time_limit": self.solver_limit}

    def _run(self, native, model, deadline, options):
        res = milp(**native)
        if res.status == 0:
            objective = model.evaluate(res.x)
            return MilpSolution.found(self.name, SolveStatus.OPTIMAL, res.x, objective, objective, deadline.elapsed())
        status = {1: SolveStatus.TIME_LIMIT, 2: SolveStatus.INFEASIBLE}.get(res.status, SolveStatus.ERROR)
        return MilpSolution.failure(self.name, status, deadline.elapsed(), res.message)


@pytest.fixture
def register(monkeypatch):
    """Registers backends for one test (on a copy of the registry, restored afterwards)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield register_backend
    monkeypatch.undo()
    assert ScipyBackend.name not in backend_names()


def test_a_registered_backend_is_usable_by_name(register, tiny):
    assert ScipyBackend.name not in backend_names()
    register(ScipyBackend())
    assert ScipyBackend.name in backend_names()
    solution = small_model().solve(ScipyBackend.name)
    assert solution.status == "optimal" and solution.objective == pytest.approx(OPTIMUM, abs=1e-9)
    assert solution.backend == ScipyBackend.name
    net, x, eps = tiny
    for radius, status in ((eps, "adversarial"), (eps - 1e-3, "robust")):  # on both sides of the minimal radius
        result = attack(net, x, radius, method="milp", backend=ScipyBackend.name, time_limit=30)
        assert (result.status, result.backend) == (status, ScipyBackend.name)
    with pytest.raises(BnnmipError, match="threads: backend 'scipy-test'"):
        small_model().solve(ScipyBackend.name, threads=2)


def test_the_template_counts_the_build_against_the_limit(register):
    slow = ScipyBackend(build_seconds=0.3)
    register(slow)
    solution = small_model().solve(ScipyBackend.name, time_limit=0.1)
    assert solution.status == "time_limit" and "building" in solution.message
    assert solution.time >= 0.3 and solution.values is None
    assert slow.solver_limit is None  # the solver never started
    solution = small_model().solve(ScipyBackend.name, time_limit=5.0)
    assert solution.status == "optimal"
    assert slow.solver_limit <= 5.0 - 0.3  # the solver was handed only what the build left


def test_the_template_checks_the_capabilities(register):
    register(ScipyBackend(capabilities=Capabilities(lp=False, integer_only=True)))
    with pytest.raises(InvalidArgumentError, match="does not solve LPs"):
        small_model().relaxed().solve(ScipyBackend.name)
    with pytest.raises(InvalidArgumentError, match="needs integer columns, coefficients and bounds"):
        small_model().solve(ScipyBackend.name)  # z is continuous, the row bound 4.5 not an integer
    assert small_model(integer=True).solve(ScipyBackend.name).objective == pytest.approx(OPTIMUM, abs=1e-9)
    with pytest.raises(InvalidArgumentError, match="time_limit"):
        small_model().solve(ScipyBackend.name, time_limit=0)


def test_a_missing_package_is_a_clear_error(register):
    missing = ScipyBackend()
    missing.package = "no_such_solver_package"
    register(missing)
    assert not missing.available()
    with pytest.raises(BnnmipError, match="needs the Python package 'no_such_solver_package'"):
        small_model().solve(ScipyBackend.name)
