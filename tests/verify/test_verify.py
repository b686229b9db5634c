"""The exact engine (bnnmip.verify) against brute force, route by route, on tiny networks of every input kind.

Grid inputs (±1 or real first layer, or input binarization): the truth is enumerated over the whole
input grid (tests/helpers/milp_nets.py); at the minimal flip radius r* every route that applies must find an
onnxruntime-verified flip and at r* - 1 it must prove robustness.  A route that does not apply must
say why and answer 'unknown' — never a verdict.  Continuous inputs: every 'robust' must survive dense
sampling and every vertex of the box.  Real solvers, real onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnnmip
from bnnmip.verify import ROUTES
from tests.helpers import sample, shipped_inputs, shipped_net, slow
from tests.helpers.milp_nets import cached_case, check_continuous_verdict, continuous_case, radii

N_NETS = 60
FAST_NETS = range(0, N_NETS, 6)  # the sample of pytest -q


def _applies(route: str, net) -> bool:
    ib = net.input_binarization is not None
    if route == "cpsat":
        return ib or net.layers[0].binary_weights
    return True


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("seed", sample(range(N_NETS), FAST_NETS))
def test_every_route_matches_brute_force(seed, route):
    c = cached_case(seed)
    for r, flip in radii(c):
        result = bnnmip.verify(c.net, c.x, r * c.step, levels=c.levels, method=route, time_limit=20)
        where = f"{c.describe()}; radius {r} ({'a flip exists' if flip else 'no flip'}), route {route}"
        if result.status == "unknown":  # allowed only where the route says it does not apply, or gives up
            assert not _applies(route, c.net) or "too many" in result.message, f"{where}: undecided ({result.message})"
            assert "does not apply" in result.message or "too many" in result.message, where
            continue
        if flip:
            assert result.status == "adversarial", f"{where}: says {result.status}"
            assert result.verified and result.check.ok and result.adv_label != c.label, where
            assert np.abs(result.x_adv - c.x).max() <= r * c.step + 1e-9, where
        else:
            assert result.status == "robust", f"{where}: says {result.status}"
            assert result.proof, where
@slow  # builds all 60 networks
def test_the_tiny_nets_exercise_every_route():
    """Branch-and-bound really branches, CP-SAT really solves, and both input kinds are covered."""
    kinds = {"ib": 0, "binary": 0, "real": 0}
    for seed in range(N_NETS):
        net = cached_case(seed).net
        kinds["ib" if net.input_binarization is not None else "binary" if net.layers[0].binary_weights
              else "real"] += 1
    assert min(kinds.values()) >= 5, kinds


@pytest.mark.parametrize("route", ["auto", "bab", "milp", "enumerate"])
@pytest.mark.parametrize("seed", sample(range(12), range(3)))
def test_continuous_verdicts_hold_under_dense_sampling(seed, route, tmp_path):
    net, x = continuous_case(seed, tmp_path, real_first_layer=seed % 3 == 2)
    label = int(net.predict(x)[0])
    rng = np.random.default_rng(seed)
    for eps in (0.05, 0.2):
        result = bnnmip.verify(net, x, eps, method=route, time_limit=20)
        check_continuous_verdict(net, x, eps, label, result, rng, f"seed {seed}, {net!r}, eps {eps}, route {route}")


def test_cpsat_route_says_why_it_does_not_apply(tmp_path):
    net, x = continuous_case(2, tmp_path, real_first_layer=True)
    result = bnnmip.verify(net, x, 1.0, method="cpsat", time_limit=5)  # the whole range: intervals do not decide
    assert result.status == "unknown" and "CP-SAT needs an integer model" in result.message


@pytest.fixture(scope="module")
def fmnist():
    return shipped_inputs("fmnist_test100")


@slow  # three proofs on shipped models
def test_zoo_decisions_are_fast_and_proved(fmnist):
    """Shipped models: an input-binarization net by enumeration, a real-input 2x100 by branch-and-bound."""
    ib = shipped_net("fmnist_ib200-3x100", levels=255)
    result = bnnmip.verify(ib, fmnist[3], 3 / 255, time_limit=30)
    assert result.status == "robust" and result.proof.startswith("enumeration"), result.details
    net = shipped_net("fmnist_2x100", levels=255)
    result = bnnmip.verify(net, fmnist[1], 1 / 255, time_limit=30)
    assert result.status == "robust" and result.time < 20, result.details
    result = bnnmip.verify(net, fmnist[0], 5 / 255, time_limit=30)
    assert result.status == "adversarial" and result.check.ok


def test_attack_exact_and_minimal_eps_use_the_engine(fmnist):
    ib = shipped_net("fmnist_ib200-3x100", levels=255)
    result = bnnmip.attack(ib, fmnist[0], 1 / 255, method="exact", time_limit=20)
    assert result.method == "exact" and result.status == "adversarial" and result.verified
    found = bnnmip.minimal_eps(ib, fmnist[0], time_limit=30)
    assert found.exact and found.steps == 1 and found.verified


def test_minimal_eps_pulls_a_far_flip_closer():
    """``_closer``: a flip at a large distance, every change clipped to d steps; what it returns flips in
    bnnmip and in onnxruntime, lies exactly d steps away, and never below the brute-force minimum."""
    from bnnmip.attacks.minimal_eps import _Search
    from bnnmip.timing import Deadline

    pulled = 0
    for seed in range(30):
        c = cached_case(seed)
        r_star = c.min_flip_radius()
        if r_star is None:
            continue
        flips = np.flatnonzero(c.predictions != c.label)
        far = flips[np.argmax(c.distances()[flips])]
        distance = int(c.distances()[far])
        if distance <= r_star:
            continue
        search = _Search(c.net, c.x, c.levels, c.step, Deadline.start(10), "highs", "interval", None, None, "auto")
        closer = search._closer(c.grid[far] / c.levels, distance)
        if closer is None:
            continue
        d, x_adv, adv_label, verified, check = closer
        assert r_star <= d < distance, (c.describe(), d)
        assert np.abs(x_adv - c.x).max() == pytest.approx(d * c.step)
        assert adv_label != c.label and c.net.predict(x_adv)[0] == adv_label and verified and check.ok
        pulled += 1
    assert pulled >= 3
