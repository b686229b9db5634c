"""IProp's layer-local problems: the native local search against brute force and the exact MILP.

Every instance is a small ±1 layer over 0/1 inputs whose optimum brute force knows: all flip sets
of at most S movable inputs, valued by the layer-local objective (Phi minus the flip costs).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bnnmip.attacks.iprop_layers import BinaryMilp, LayerData
from bnnmip.attacks.iprop_local import BETA, Goals, LocalBinary, LocalInput, phi


def _stage(rng, m: int, n: int) -> LayerData:
    coef = rng.choice([-1.0, 1.0], size=(m, n))
    theta = rng.integers(-2, 3, m).astype(float)
    return LayerData(1, "binary", np.arange(n), np.zeros(n), np.ones(n), coef, theta, 1.0, 0.0,
                     np.zeros(m, bool), True, 1.0)


def _instance(rng, m=7, n=8):
    data = _stage(rng, m, n)
    inp = rng.integers(0, 2, n).astype(float)
    goals = Goals(rng.choice([-1.0, 1.0], m), rng.uniform(0.2, 2.0, m))
    movable = rng.random(n) < 0.85
    cost = np.where(rng.random(n) < 0.5, rng.uniform(0, 0.3, n), 0.0)
    return data, inp, goals, movable, cost, int(rng.integers(1, 4))


def _value(stage: LocalBinary, inp, new, goals, cost) -> float:
    r, w, e = stage.weighted(inp, goals)
    P = e * stage.s(new - inp)
    return float(phi(P, r, w).sum() - cost[new != inp].sum())


def _optimum(stage, inp, goals, movable, cost, S) -> float:
    best = 0.0
    cols = np.flatnonzero(movable)
    for size in range(1, S + 1):
        for F in itertools.combinations(cols, size):
            new = inp.copy()
            new[list(F)] = 1 - new[list(F)]
            best = max(best, _value(stage, inp, new, goals, cost))
    return best


def test_local_search_respects_the_budget_and_comes_close_to_the_optimum():
    rng = np.random.default_rng(0)
    local, optimum = [], []
    for _ in range(40):
        data, inp, goals, movable, cost, S = _instance(rng)
        stage = LocalBinary(data)
        new = stage.solve(inp, goals, S, movable, cost, rng)
        value = 0.0
        if new is not None:
            changed = new != inp
            assert 1 <= changed.sum() <= S and not np.any(changed & ~movable)
            assert set(np.unique(new)) <= {0.0, 1.0}
            value = _value(stage, inp, new, goals, cost)
            assert value > 0  # it only proposes what it believes helps
        best = _optimum(stage, inp, goals, movable, cost, S)
        assert value <= best + 1e-9
        local.append(value)
        optimum.append(best)
    assert sum(local) >= 0.85 * sum(optimum), (sum(local), sum(optimum))


@pytest.mark.parametrize("backend", ["highs", "cpsat"])
def test_the_exact_milp_reaches_the_brute_force_optimum_of_the_same_objective(backend):
    pytest.importorskip("ortools" if backend == "cpsat" else "highspy")
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(12):
        data, inp, goals, movable, cost, S = _instance(rng, m=6, n=7)
        stage = LocalBinary(data)
        h = np.where(data.coef @ inp >= data.theta, 1, -1)
        milp = BinaryMilp(data, backend, True, None, 0.0)
        new = milp.solve(inp, h, goals.weight, goals.desired, S, 20.0, movable, None, cost, BETA)
        best = _optimum(stage, inp, goals, movable, cost, S)
        value = 0.0 if new is None else _value(stage, inp, new, goals, cost)
        if new is not None:
            assert np.sum(new != inp) <= S and not np.any((new != inp) & ~movable)
        assert value == pytest.approx(best, abs=1e-6)
        checked += best > 0
    assert checked >= 4


def test_toggle_gains_and_marginal_goals_match_recomputation():
    rng = np.random.default_rng(2)
    for _ in range(10):
        data, inp, goals, movable, cost, S = _instance(rng)
        stage = LocalBinary(data)
        new = inp.copy()
        new[: S] = 1 - new[: S]
        r, w, e = stage.weighted(inp, goals)
        P = e * stage.s(new - inp)
        gains = stage.toggle_gains(P, r, w, e, 1.0 - 2.0 * new)
        base = _value(stage, inp, new, goals, np.zeros(len(inp)))
        for i in range(len(inp)):
            other = new.copy()
            other[i] = 1 - other[i]
            assert gains[i] == pytest.approx(_value(stage, inp, other, goals, np.zeros(len(inp))) - base, abs=1e-5)
        desired, weight = stage.marginal_goals(inp, new, goals, bonus=1.0)
        assert np.all(weight >= 0)
        # a column asked to move is one whose toggle helps; its weight is that help
        moved = desired != new
        assert np.allclose(weight[moved], gains[moved], atol=1e-5)
        assert np.allclose(weight[~moved], -gains[~moved], atol=1e-5)


def test_pixel_candidates_stay_in_the_box_and_trust_region():
    rng = np.random.default_rng(3)
    m, n = 6, 12
    coef = rng.choice([-1.0, 1.0], size=(m, n))
    lower, upper = np.zeros(n), np.full(n, 6.0)
    inp = rng.integers(0, 7, n).astype(float)
    theta = coef @ inp + rng.integers(-6, 7, m)
    data = LayerData(0, "pixels", np.arange(n), lower, upper, coef, theta, 1.0, 0.0, np.zeros(m, bool), True, 1.0)
    stage = LocalInput(data)
    h = np.where(coef @ inp >= theta, 1, -1)
    goals = Goals(-h.astype(float), np.ones(m))  # flip everything
    for S in (1, 2, 3):
        candidates = stage.solve(inp, goals, S, rng)
        assert candidates
        for v in candidates:
            assert np.all(v >= lower) and np.all(v <= upper) and np.all(np.abs(v - inp) <= S)
            assert np.array_equal(v, np.rint(v))
