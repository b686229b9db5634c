"""MilpModel and sessions: evaluation, native round trips, in-place updates, file errors, limits."""

from __future__ import annotations

import warnings
from dataclasses import replace

import highspy
import numpy as np
import pytest
import scipy.sparse as sp

from bnnmip import InvalidArgumentError, MilpModel, attack_milp
from bnnmip.backends import RebuildSession, get_backend, open_session
from tests.helpers import backend_params, hard_attack_milp
from tests.helpers.milp_nets import small_model, tiny_case


def test_evaluate_and_violation():
    m = small_model()
    assert m.evaluate(np.array([3.0, 0, 2])) == 3 * 3 - 2 + 5
    assert m.violation(np.array([3.0, 0, 2])) == 0.0  # x - z = 1, y + z = 2, x + y = 3
    assert m.violation(np.array([3.0, 1, 2])) == pytest.approx(1.0)  # y + z = 3: row 3 by 1
    assert m.violation(np.array([3.5, 0, 2])) == pytest.approx(0.5)  # integrality (and x - z = 1.5 is fine)
    assert m.violation(np.array([4.0, 0, 2])) == pytest.approx(1.0)  # bound x <= 3 (and x - z = 2 is fine)
    assert m.violation(np.array([3.0, 0, -1.5])) == pytest.approx(3.5)  # x - z = 4.5 > 3 by 1.5; y + z short by 3.5
    assert repr(m).startswith("MilpModel('bnnmip': max over 3 columns (1 binary, 1 other integer), 3 rows")


@pytest.mark.parametrize("sense, offset, optimum", [("max", 5.0, 15.0), ("min", -7.25, -0.25)])
@pytest.mark.parametrize("backend, solver", backend_params(solvers=True))
def test_every_backend_solves_the_small_model(backend, solver, sense, offset, optimum):
    m = small_model(sense, offset, integer=get_backend(backend).capabilities.integer_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solution = m.solve(backend, solver=solver)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(optimum, abs=1e-9)
    assert solution.bound == pytest.approx(optimum, abs=1e-9)
    assert m.violation(solution.values) <= 1e-9
    assert m.evaluate(solution.values) == pytest.approx(optimum, abs=1e-9)


def test_to_highs_holds_the_model():
    m = small_model()
    lp = m.to_highs().getLp()
    inf = highspy.kHighsInf
    fin = lambda v: np.clip(v, -inf, inf)  # noqa: E731
    assert lp.sense_ == highspy.ObjSense.kMaximize and lp.offset_ == 5.0
    np.testing.assert_array_equal(lp.col_cost_, m.objective)
    np.testing.assert_array_equal(lp.col_lower_, fin(m.col_lower))
    np.testing.assert_array_equal(lp.col_upper_, fin(m.col_upper))
    np.testing.assert_array_equal(lp.row_lower_, fin(m.row_lower))
    np.testing.assert_array_equal(lp.row_upper_, fin(m.row_upper))
    A = lp.a_matrix_
    shape = (m.num_rows, m.num_cols)
    got = (sp.csr_matrix((A.value_, A.index_, A.start_), shape) if A.format_ == highspy.MatrixFormat.kRowwise
           else sp.csc_matrix((A.value_, A.index_, A.start_), shape))
    assert (got != m.A).nnz == 0
    assert [int(v) for v in lp.integrality_] == [1, 1, 0]


def test_to_scip_holds_the_model():
    m = small_model()
    scip = m.to_scip()
    by_name = {v.name: v for v in scip.getVars()}
    variables = [by_name[name] for name in m.col_names()]
    assert len(by_name) == m.num_cols
    assert [v.vtype() for v in variables] == ["INTEGER", "BINARY", "CONTINUOUS"]
    assert [v.getObj() for v in variables] == m.objective.tolist()
    assert [v.getLbOriginal() for v in variables][:2] == [0.0, 0.0]
    assert scip.isInfinity(-variables[2].getLbOriginal()) and scip.isInfinity(variables[2].getUbOriginal())
    assert scip.getObjoffset() == 5.0 and scip.getObjectiveSense() == "maximize"
    rows = []
    assert [c.name for c in scip.getConss()] == m.rows_names()
    for cons in scip.getConss():
        coefs = scip.getValsLinear(cons)
        rows.append([coefs.get(name, 0.0) for name in m.col_names()])
    np.testing.assert_array_equal(np.array(rows), m.A.toarray())
    assert scip.isInfinity(-scip.getLhs(scip.getConss()[0])) and scip.getRhs(scip.getConss()[0]) == 4.5
    assert (scip.getLhs(scip.getConss()[1]), scip.getRhs(scip.getConss()[1])) == (1.0, 3.0)


def test_to_cvxpy_holds_the_model():
    m = small_model()
    problem, x = m.to_cvxpy()
    assert x.shape == (3,)
    np.testing.assert_array_equal(x.bounds[0], m.col_lower)
    np.testing.assert_array_equal(x.bounds[1], m.col_upper)
    rng = np.random.default_rng(0)
    for v in rng.uniform(-2, 4, size=(20, 3)):
        x.value = v
        worst_row = max(float(np.max(c.violation(), initial=0.0)) for c in problem.constraints)
        rows_only = replace(m, col_lower=np.full(3, -np.inf), col_upper=np.full(3, np.inf),
                            integrality=np.zeros(3, bool))
        assert worst_row == pytest.approx(rows_only.violation(v), abs=1e-12)
        assert problem.objective.value == pytest.approx(m.evaluate(v))


def test_model_checks_its_arguments(tmp_path):
    m = small_model()
    with pytest.raises(InvalidArgumentError, match="inconsistent sizes"):
        replace(m, objective=np.zeros(2))
    with pytest.raises(InvalidArgumentError, match="sense"):
        replace(m, sense="maximise")
    with pytest.raises(InvalidArgumentError, match="backend"):
        m.solve("gurobi")
    for bad in (0, -1, float("nan"), "soon"):
        with pytest.raises(InvalidArgumentError, match="time_limit"):
            m.solve(time_limit=bad)
    with pytest.raises(InvalidArgumentError, match="start"):
        m.solve(start=np.zeros(2))


def test_write_rejects_bad_paths(tmp_path):
    m = small_model()
    with pytest.raises(InvalidArgumentError, match="unknown model file suffix"):
        m.write(tmp_path / "model.txt")
    with pytest.raises(InvalidArgumentError, match="unknown model file suffix"):
        m.write(tmp_path / "model")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        m.write(tmp_path / "no" / "such" / "model.mps")
    (tmp_path / "taken.lp").mkdir()
    with pytest.raises(InvalidArgumentError, match="cannot write"):
        m.write(tmp_path / "taken.lp")
    assert m.write(tmp_path / "MODEL.MPS").is_file()  # the suffix is case-insensitive


# ---------------------------------------------------------------------------------------------- sessions
@pytest.fixture(scope="module")
def session_model(tmp_path_factory):
    """An attack MILP of a tiny network with a few dozen columns (grid pixels and binaries)."""
    folder = tmp_path_factory.mktemp("session")
    for seed in range(50):
        c = tiny_case(seed, folder)
        r = c.min_flip_radius()
        if c.net.input_binarization is None and c.net.layers[0].binary_weights and r and r >= 2:
            target = next(t for t in range(c.net.n_classes) if t != c.label)
            model = attack_milp(c.net, c.x, r * c.step, target)
            if model.num_cols >= 10:
                return model
    raise AssertionError("no suitable tiny network among the first 50 seeds")


def _changes(model: MilpModel, rng: np.random.Generator, round_: int, integral: bool) -> list[tuple]:
    """A list of (method, args) updates, each valid for every session kind (``integral``: integer
    coefficients stay integers, for an ``integer_only`` backend)."""
    n, m = model.num_cols, model.num_rows
    cols = rng.choice(n, size=max(1, n // 3), replace=False)
    binary = np.flatnonzero(model.integrality & (model.col_lower == 0) & (model.col_upper == 1))
    fix = rng.choice(binary, size=min(2, len(binary)), replace=False)
    rows = rng.choice(m, size=max(1, m // 4), replace=False)
    rr, cc = model.A.nonzero()
    pick = rng.choice(len(rr), size=min(5, len(rr)), replace=False)
    changes = [("set_objective", (cols, rng.normal(size=len(cols))))]
    if round_ == 1:
        changes.append(("set_col_bounds", (fix, np.zeros(len(fix)), np.zeros(len(fix)))))
    if round_ == 2:
        changes.append(("set_row_bounds", (rows, model.row_lower[rows] - 1.0, model.row_upper[rows] + 1.0)))
        changes.append(("set_entries", (rr[pick], cc[pick], model.A[rr[pick], cc[pick]].A1 * (2 if integral else 1.5))))
    if round_ == 3:
        changes.append(("set_col_bounds", (fix, np.zeros(len(fix)), np.ones(len(fix)))))  # free them again
    return changes


def _apply_to_arrays(model: MilpModel, changes) -> MilpModel:
    """The same changes on a copy of the arrays: the reference a fresh build solves."""
    s = RebuildSession(model, "highs")
    for method, args in changes:
        getattr(s, method)(*args)
    return replace(model, col_lower=s.col_lower, col_upper=s.col_upper, row_lower=s.row_lower,
                   row_upper=s.row_upper, objective=s.objective, A=s.A, info={})


@pytest.mark.parametrize("backend", backend_params("in_place_session"))
def test_sessions_match_a_fresh_build(session_model, backend):
    rng = np.random.default_rng(7)
    in_place = open_session(session_model, backend)
    rebuild = open_session(session_model, backend, reuse=False)
    reference = session_model
    for round_ in range(4):
        changes = _changes(session_model, rng, round_, get_backend(backend).capabilities.integer_only) if round_ else []
        for session in (in_place, rebuild):
            for method, args in changes:
                getattr(session, method)(*args)
        reference = _apply_to_arrays(reference, changes)
        fresh = reference.solve(backend)
        for name, session in (("in place", in_place), ("rebuild", rebuild)):
            got = session.solve()
            where = f"{backend} {name} session, round {round_}"
            assert got.status == fresh.status, f"{where}: {got.status} != {fresh.status}"
            if fresh.status == "optimal":
                assert got.objective == pytest.approx(fresh.objective, abs=1e-6), where
                assert reference.violation(got.values) <= 1e-6, where


def test_rebuild_session_rejects_missing_entries(session_model):
    session = open_session(session_model, "highs", reuse=False)
    dense = session_model.A.toarray()
    r, c = np.argwhere(dense == 0)[0]
    with pytest.raises(InvalidArgumentError, match="not entries"):
        session.set_entries([r], [c], [1.0])


# ---------------------------------------------------------------------------------------------- limits
@pytest.fixture(scope="module")
def hard_instance():
    """fmnist_2x100, image 0, radius 1/255, closest target: no solver closes it in seconds."""
    return hard_attack_milp()


@pytest.mark.parametrize("backend, solver", backend_params(solvers=True))
def test_time_limited_incumbent_is_feasible_never_optimal(hard_instance, backend, solver):
    model, start = hard_instance
    warm = get_backend(backend).capabilities.warm_start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solution = model.solve(backend, time_limit=1.0, solver=solver, start=start if warm else None)
    assert solution.status in ("feasible", "time_limit"), solution
    assert solution.time <= 1.6, f"{backend}/{solver}: {solution.time:.2f} s for a 1 s limit"
    if warm:  # the clean input was given as a start: there is an incumbent
        assert solution.status == "feasible"
    if solution.status == "feasible":
        assert model.violation(solution.values) <= 1e-6
        assert solution.objective == pytest.approx(model.evaluate(solution.values), abs=1e-6)
        assert solution.bound is None or solution.bound >= solution.objective - 1e-6
        assert solution.gap is None or solution.gap > 0
    else:
        assert solution.values is None and solution.objective is None


def test_an_lp_session_gets_its_time_limit_on_every_solve():
    """HiGHS's LP clock adds up over the runs of one instance: without care, a session's later
    solves would stop at once with 'time limit' (IProp's input LP did, after 0.3 s in all)."""
    rng = np.random.default_rng(3)
    n = 120
    A = sp.csr_matrix(rng.standard_normal((n, n)))
    lp = MilpModel(-np.ones(n), np.ones(n), np.zeros(n, bool), A, np.full(n, -np.inf), np.ones(n),
                   rng.random(n), 0.0, "max")
    session = open_session(lp, "highs")
    limit = 0.05
    for _ in range(40):
        session.set_objective(np.arange(n), rng.standard_normal(n))
        got = session.solve(time_limit=limit)
        assert got.status == "optimal", got.status
    assert session.h.getRunTime() > limit  # the clock did pass the limit: the test means something
