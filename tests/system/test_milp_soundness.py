"""The exact attack against brute force on 200 tiny random BNNs (real solvers, onnxruntime).

For every network the truth is enumerated over the whole input grid (tests/helpers/milp_nets.py).  At the
minimal flip radius r* the attack must say 'adversarial' with an onnxruntime-verified input, at
r* - 1 (or, with no flip anywhere, over the whole range) it must say 'robust'; ``minimal_eps`` must
find r* exactly; and one targeted MILP's optimum must equal the brute-force maximum of
logit[t] - logit[label].  HiGHS and SCIP run on every network, CVXPY on a subset, so no backend
can disagree with the truth or with another.  On continuous inputs (no grid), every 'robust'
verdict is checked against dense sampling and every adversarial input against onnxruntime.

``pytest -q`` checks a sample of the networks; the full suite checks all of them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bnnmip import attack
from tests.helpers import sample, slow
from tests.helpers.milp_nets import (
    cached_case,
    check_attacks,
    check_continuous_verdict,
    check_minimal_eps,
    check_optimum,
    continuous_case,
)

N_NETS = 200
CVXPY_NETS = range(0, N_NETS, 16)  # 13 networks
FAST_NETS = range(0, N_NETS, 25)  # the sample of pytest -q: 8 networks (input binarization, real and ±1 first layers)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_nets")


@pytest.mark.parametrize("backend", ["highs", "scip"])
@pytest.mark.parametrize("seed", sample(range(N_NETS), FAST_NETS))
def test_attack_matches_brute_force(seed, backend, folder):
    c = cached_case(seed)
    check_attacks(c, backend)
    check_minimal_eps(c, backend)
    check_optimum(c, backend)


@pytest.mark.parametrize("solver", ["HIGHS", "SCIP"])
@pytest.mark.parametrize("seed", sample(CVXPY_NETS, [0]))
def test_cvxpy_matches_brute_force(seed, solver, folder):
    c = cached_case(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_optimum(c, "cvxpy", solver)
        if solver == "HIGHS":
            check_attacks(c, "cvxpy")
            if seed % 32 == 0:  # 7 networks: each search is a dozen CVXPY compiles
                check_minimal_eps(c, "cvxpy")


@slow  # builds all 200 networks
def test_the_nets_cover_the_cases(folder):
    """The generator really produces every kind of network and both answers."""
    cases = [cached_case(seed) for seed in range(N_NETS)]
    ib = sum(c.net.input_binarization is not None for c in cases)
    real = sum(c.net.input_binarization is None and not c.net.layers[0].binary_weights for c in cases)
    no_flip = sum(c.min_flip_radius() is None for c in cases)
    deep = sum(c.net.depth == 3 for c in cases)
    zero_gamma = sum(np.any(layer.scale == 0) for c in cases for layer in c.net.layers)
    assert min(ib, real, no_flip, deep, zero_gamma) >= 10, (ib, real, no_flip, deep, zero_gamma)
    assert N_NETS - ib - real >= 80
    assert sum(c.min_flip_radius() or 0 for c in cases) > 1.5 * (N_NETS - no_flip)  # not all at radius 1


@pytest.mark.parametrize("backend", ["highs", "scip"])
@pytest.mark.parametrize("seed", sample(range(30), range(3)))
def test_continuous_verdicts_hold_under_dense_sampling(seed, backend, folder):
    """No grid: every 'robust' survives 20,000 samples and every vertex of the box; every flip is verified."""
    net, x = continuous_case(seed, folder, real_first_layer=seed % 3 == 2)
    label = int(net.predict(x)[0])
    rng = np.random.default_rng(seed)
    statuses = []
    for eps in (0.05, 0.15, 0.4):
        result = attack(net, x, eps, method="milp", backend=backend, time_limit=30)
        where = f"seed {seed}, {net!r}, eps {eps}, {backend}"
        check_continuous_verdict(net, x, eps, label, result, rng, where, onnx_rows=2000)
        statuses.append(result.status)
    assert "unknown" not in statuses, f"seed {seed}: tiny continuous MILPs must be decided: {statuses}"
