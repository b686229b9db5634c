"""IProp, IProp+PGD and 'best' on small networks whose truth brute force knows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bnnmip
from bnnmip.attacks import attack, iprop_attack
from bnnmip.io.onnx_writer import random_params
from tests.helpers import sample, saved_net, shipped_inputs, shipped_net, slow


def _net(tmp_path, seed, n=5, widths=(6, 5), classes=3, levels=4, ib=False):
    rng = np.random.default_rng(seed)
    params = random_params(rng, n, list(widths), classes, input_binarization=ib)
    return saved_net(params, tmp_path / f"net{seed}.onnx", levels=levels), rng


def _flip_exists(net, x, eps) -> bool:
    lo, hi = net.input_range
    L = net.levels
    step = (hi - lo) / L
    axes = [np.arange(np.ceil((max(v - eps, lo) - lo) / step - 1e-9),
                      np.floor((min(v + eps, hi) - lo) / step + 1e-9) + 1) for v in x]
    points = np.array(list(itertools.product(*axes))) * step + lo
    return bool(np.any(net.predict(points) != net.predict(x)[0]))


@slow  # 24 networks, each attacked until IProp finds a flip or its limit
@pytest.mark.parametrize("ib", [False, True])
def test_iprop_finds_flips_that_exist_and_never_lies(tmp_path, ib):
    found = exists = 0
    for seed in range(12):
        net, rng = _net(tmp_path, seed, ib=ib)
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        eps = 2 / net.levels
        truth = _flip_exists(net, x, eps)
        r = iprop_attack(net, x, eps, time_limit=10 if truth else 1, seed=seed)
        assert r.status in ("adversarial", "unknown")  # IProp never claims robustness
        if r.status == "adversarial":
            assert truth and r.verified
            assert np.abs(r.x_adv - x).max() <= eps + 1e-9
            assert r.adv_label != r.label
        exists += truth
        found += r.status == "adversarial"
    assert exists >= 4
    assert found >= 0.75 * exists, f"IProp found {found} of {exists} flips that brute force finds"


def test_reuse_and_rebuild_solve_the_same_subproblems(tmp_path):
    """In-place updates change how a subproblem reaches the solver, never what it is: after the
    same sequence of changes, an in-place session and a rebuilt one reach the same optimum."""
    from bnnmip.attacks import iprop_layers
    from bnnmip.bounds import interval_bounds_from_box
    from bnnmip.box import input_box

    net, rng = _net(tmp_path, 3, n=6, widths=(8, 7, 5), levels=6)
    x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
    box = input_box(net, x, 3 / net.levels)
    bounds = interval_bounds_from_box(net, box)
    data = iprop_layers.layer_data(net, 2, box, bounds, box.snap(x), 0.0)
    solvers = [iprop_layers.BinaryMilp(data, "highs", reuse, None, 0.0) for reuse in (True, False)]
    m, n = len(data.theta), len(data.inputs)
    solved = 0
    for _ in range(15):
        inp = rng.integers(0, 2, n).astype(float)
        h = np.where(data.coef @ inp >= data.theta, 1, -1)
        weights, desired = rng.uniform(0.5, 2, m), rng.choice([-1.0, 1.0], m)
        S, movable = int(rng.integers(1, 4)), rng.random(n) < 0.8
        values = []
        for solver in solvers:
            new = solver.solve(inp, h, weights, desired, S, 10.0, movable)
            if new is None:
                values.append(None)
                continue
            assert np.sum(new != inp) <= S and np.all(new[~movable] == inp[~movable])
            on = data.coef @ new >= data.theta
            values.append(float(np.sum(weights * np.where(desired > 0, on, ~on))))
        assert (values[0] is None) == (values[1] is None)
        if values[0] is not None:
            solved += 1
            assert values[0] == pytest.approx(values[1])
    assert solved >= 5


@pytest.mark.parametrize("method", sample(["iprop", "iprop+pgd", "best"], ["iprop"]))
def test_time_limit_and_verified_results_on_a_shipped_model(method):
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    r = attack(net, x, 5 / 255, method=method, time_limit=2.0)
    assert r.time <= 3.0
    assert r.method == method
    assert r.trace and all(b[1] >= a[1] for a, b in zip(r.trace, r.trace[1:]))
    if r.status == "adversarial":
        assert r.verified
        assert np.argmax(bnnmip.onnx_logits(net, r.x_adv)[0]) != r.label


@slow  # PGD and IProp spend their share of the limit before the MILP proves
def test_best_can_prove_robustness(tmp_path):
    """'best' ends with the exact MILP, so at a tiny radius it certifies."""
    net, rng = _net(tmp_path, 5)
    for _ in range(20):
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        if not _flip_exists(net, x, 1 / net.levels):
            break
    r = attack(net, x, 1 / net.levels, method="best", time_limit=10)
    assert r.status == "robust"


def test_iprop_starts_from_a_given_input(tmp_path):
    net, rng = _net(tmp_path, 7)
    x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
    start = np.clip(x + 1 / net.levels, 0, 1)
    r = iprop_attack(net, x, 1 / net.levels, time_limit=1, start=start, max_iterations=0)
    f_start = net.logits(start)[0]
    label = int(np.argmax(net.logits(x)[0]))
    assert r.objective >= max(f_start[t] - f_start[label] for t in range(net.n_classes) if t != label) - 1e-12
