"""IProp end to end on networks whose truth brute force knows, what it may never report, its
backend-solved layer problems, and the chains (iprop+pgd, best)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

import bnnmip
from bnnmip.attacks import attack, iprop_attack, iprop_layers
from bnnmip.attacks import tracker as tracker_module
from bnnmip.attacks.result import OnnxRecheck
from bnnmip.bounds import interval_bounds_from_box
from bnnmip.box import input_box
from bnnmip.errors import InvalidArgumentError
from bnnmip.io.onnx_writer import random_params, to_onnx


def _net(tmp_path, seed, n=5, widths=(6, 5), classes=3, levels=4, ib=False):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"net{seed}_{len(widths)}_{ib}.onnx"
    onnx.save(to_onnx(random_params(rng, n, list(widths), classes, input_binarization=ib)), path)
    return bnnmip.load_onnx(path, levels=levels), rng


def _flip_exists(net, x, eps) -> bool:
    lo, hi = net.input_range
    step = (hi - lo) / net.levels
    axes = [np.arange(np.ceil((max(v - eps, lo) - lo) / step - 1e-9),
                      np.floor((min(v + eps, hi) - lo) / step + 1e-9) + 1) for v in x]
    points = np.array(list(itertools.product(*axes))) * step + lo
    return bool(np.any(net.predict(points) != net.predict(x)[0]))


@pytest.mark.parametrize("widths,ib", [((6, 5), False), ((6, 5), True), ((7, 6, 5), False), ((6, 6, 5, 4), False)])
def test_finds_the_flips_brute_force_finds_and_no_others(tmp_path, widths, ib):
    found = exists = 0
    for seed in range(12):
        net, rng = _net(tmp_path, seed, widths=widths, ib=ib)
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        eps = 2 / net.levels
        truth = _flip_exists(net, x, eps)
        r = iprop_attack(net, x, eps, time_limit=5 if truth else 0.5, seed=seed)
        assert r.status in ("adversarial", "unknown")  # IProp never claims robustness
        if r.status == "adversarial":
            assert truth and r.verified and r.check.ok
            assert np.abs(r.x_adv - x).max() <= eps + 1e-9
            assert int(np.argmax(bnnmip.onnx_logits(net, r.x_adv)[0])) != r.label
        exists += truth
        found += r.status == "adversarial"
    assert exists >= 4
    assert found >= 0.9 * exists, f"IProp found {found} of {exists} flips that brute force finds"


def test_never_reports_a_flip_onnxruntime_does_not_confirm(tmp_path, monkeypatch):
    """Every candidate that flips bnnmip's forward pass is re-checked; if onnxruntime disagreed,
    IProp must keep searching and end 'unknown', never 'adversarial'."""
    def disagreeing(net, x, x_adv, eps, clean_label):
        return OnnxRecheck(int(clean_label), int(clean_label), 0.0, float(eps), True)

    monkeypatch.setattr(tracker_module, "recheck", disagreeing)
    refused = 0
    for seed in range(8):
        net, rng = _net(tmp_path, seed)
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        r = iprop_attack(net, x, 2 / net.levels, time_limit=0.5, seed=seed)
        assert r.status == "unknown" and r.x_adv is None and not r.verified
        refused += "not in onnxruntime" in r.message
    assert refused >= 2


def test_flips_on_a_shipped_model_are_confirmed_by_onnxruntime():
    net = bnnmip.load_onnx("models/fmnist_2x100.onnx", levels=255)
    X = bnnmip.datasets.load_npz("models/fmnist_test100.npz").inputs()
    r = iprop_attack(net, X[0], 5 / 255, time_limit=5, seed=0)
    assert r.status == "adversarial" and r.verified and r.check.ok
    assert int(np.argmax(bnnmip.onnx_logits(net, r.x_adv)[0])) == r.adv_label != r.label
    assert r.details["iterations"] >= r.details["accepted"] >= 1


@pytest.mark.parametrize("backend", ["highs", "cpsat"])
def test_exact_layer_solvers_on_any_backend(tmp_path, backend):
    pytest.importorskip("ortools" if backend == "cpsat" else "highspy")
    found = exists = 0
    for seed in range(6):
        net, rng = _net(tmp_path, seed)
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        truth = _flip_exists(net, x, 2 / net.levels)
        r = iprop_attack(net, x, 2 / net.levels, time_limit=4 if truth else 0.5, seed=seed, solver="milp",
                         backend=backend)
        assert r.status in ("adversarial", "unknown")
        if r.status == "adversarial":
            assert truth and r.verified
        exists += truth
        found += r.status == "adversarial"
    assert found >= 0.5 * exists


def test_refusals_are_clear(tmp_path):
    net, rng = _net(tmp_path, 0, levels=None)  # continuous inputs: no integer input program
    x = rng.uniform(0, 1, net.n_inputs)
    with pytest.raises(InvalidArgumentError, match="integer program only on an input grid"):
        iprop_attack(net, x, 0.1, time_limit=1, solver="milp", backend="cpsat")
    with pytest.raises(InvalidArgumentError, match="solver"):
        iprop_attack(net, x, 0.1, time_limit=1, solver="tabu")
    with pytest.raises(InvalidArgumentError, match="reuse=False"):
        iprop_attack(net, x, 0.1, time_limit=1, reuse=False)
    with pytest.raises(InvalidArgumentError, match="restart"):
        iprop_attack(net, x, 0.1, time_limit=1, restart="never")


@pytest.mark.parametrize("restart,schedule", [("perturb", "walk"), ("escalate", "cycle"), ("random", "fixed"),
                                              ("clean", "walk")])
def test_every_restart_and_schedule_stays_in_the_box(tmp_path, restart, schedule):
    net, rng = _net(tmp_path, 4, widths=(6, 6, 5))
    x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
    r = iprop_attack(net, x, 1 / net.levels, time_limit=0.5, seed=1, restart=restart, schedule=schedule)
    assert r.x_best is not None and np.abs(r.x_best - x).max() <= 1 / net.levels + 1e-9
    assert r.status != "adversarial" or r.verified


def test_continuous_inputs_and_the_chains(tmp_path):
    net, rng = _net(tmp_path, 3, levels=None)
    for seed in range(6):
        x = rng.uniform(0, 1, net.n_inputs)
        for method in ("iprop", "iprop+pgd", "best"):
            r = attack(net, x, 0.3, method=method, time_limit=1.0, seed=seed)
            assert r.status in ("adversarial", "unknown", "robust")
            if r.status == "adversarial":
                assert r.verified and np.abs(r.x_adv - x).max() <= 0.3 + 1e-9
            assert r.trace and all(b[1] >= a[1] for a, b in zip(r.trace, r.trace[1:]))


def test_reuse_and_rebuild_solve_the_same_subproblems(tmp_path):
    """In-place updates change how a subproblem reaches the solver, never what it is: after the
    same sequence of changes, an in-place session and a rebuilt one reach the same optimum."""
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


@pytest.mark.parametrize("method", ["iprop", "iprop+pgd", "best"])
def test_time_limit_and_verified_results_on_a_shipped_model(method):
    net = bnnmip.load_onnx("models/fmnist_2x100.onnx", levels=255)
    data = bnnmip.datasets.load_npz("models/fmnist_test100.npz")
    x = data.inputs()[0]
    r = attack(net, x, 5 / 255, method=method, time_limit=2.0)
    assert r.time <= 3.0
    assert r.method == method
    assert r.trace and all(b[1] >= a[1] for a, b in zip(r.trace, r.trace[1:]))
    if r.status == "adversarial":
        assert r.verified
        assert np.argmax(bnnmip.onnx_logits(net, r.x_adv)[0]) != r.label


def test_best_decides_as_brute_force(tmp_path):
    """'best' ends with the exact engine: on tiny grid networks it proves robust exactly where no grid
    point of the box flips, and flips (re-checked by onnxruntime) where one does."""
    decided = []
    for seed in (5, 11, 12):
        net, rng = _net(tmp_path, seed)
        X = rng.integers(0, net.levels + 1, (40, net.n_inputs)) / net.levels
        exists = np.array([_flip_exists(net, x, 1 / net.levels) for x in X])
        picked = [*np.flatnonzero(exists)[:2], *np.flatnonzero(~exists)[:2]]
        for i in picked:
            r = attack(net, X[i], 1 / net.levels, method="best", time_limit=2, seed=seed)
            assert r.status == ("adversarial" if exists[i] else "robust"), (seed, X[i], r.message)
            assert r.status == "robust" or r.verified
            decided.append(str(r.status))
    assert decided.count("robust") >= 2 and decided.count("adversarial") >= 2


def test_iprop_starts_from_a_given_input(tmp_path):
    net, rng = _net(tmp_path, 7)
    x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
    start = np.clip(x + 1 / net.levels, 0, 1)
    r = iprop_attack(net, x, 1 / net.levels, time_limit=1, start=start, max_iterations=0)
    f_start = net.logits(start)[0]
    label = int(np.argmax(net.logits(x)[0]))
    assert r.objective >= max(f_start[t] - f_start[label] for t in range(net.n_classes) if t != label) - 1e-12
