"""PGD baseline: the hand-written surrogate gradient, verified flips, budgets and argument checks."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

import bnnmip
from bnnmip.attacks import attack
from bnnmip.attacks.pgd import Surrogate, SurrogateStage, pgd_attack, surrogate_logits, surrogate_value_and_grad
from bnnmip.io.onnx_writer import random_params
from tests.helpers import saved_net

KINDS = ("real", "binarized", "real_weights")


def _make(path, seed: int, n: int, widths: list[int], k: int, kind: str = "real", levels: int | None = None):
    rng = np.random.default_rng(seed)
    params = random_params(rng, n, widths, k, input_binarization=kind == "binarized",
                           real_first_layer=kind == "real_weights", negative_gamma=0.5, zero_gamma=0.1)
    return params, saved_net(params, path, levels=levels)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Small networks of each kind (γ < 0 and γ = 0 units included), with their raw parameters."""
    folder = tmp_path_factory.mktemp("pgd")
    return {kind: _make(folder / f"{kind}.onnx", i, 12, [9, 7, 6], 5, kind) for i, kind in enumerate(KINDS)}


@pytest.fixture(scope="module")
def grid_nets(tmp_path_factory):
    """Networks on the 8-bit grid, for the attack tests."""
    folder = tmp_path_factory.mktemp("pgd_grid")
    return [_make(folder / f"g{s}.onnx", 100 + s, 40, [16, 12], 4, KINDS[s % 2], levels=255)[1] for s in range(6)]


# ---------------------------------------------------------------------- the surrogate
def _kink_distance(net, X: np.ndarray, label: int, mask: np.ndarray) -> np.ndarray:
    """Per row: how far the surrogate is from a kink (a hardtanh corner, or a tie in the max)."""
    sur = Surrogate.of(net)
    u, dist = X, np.full(len(X), np.inf)
    for stage in sur.stages:
        a = u * stage.direction if stage.weight is None else u @ stage.weight
        z = stage.scale * (a - stage.centre)
        dist = np.minimum(dist, np.where(stage.flat, np.inf, np.abs(np.abs(z) - 1)).min(axis=1))
        u = stage.forward(u)[0]
    logits = np.sort(np.where(mask, sur.logits(X), -np.inf), axis=1)
    gap = np.where(mask.sum(axis=1) > 1, logits[:, -1] - logits[:, -2], np.inf)
    return np.minimum(dist, gap)


def _finite_differences(net, X: np.ndarray, label: int, targets, h: float = 1e-6) -> np.ndarray:
    n = X.shape[1]
    grads = np.empty_like(X)
    for b, x in enumerate(X):  # one batch of 2n shifted copies per row
        shifted = np.concatenate([x + h * np.eye(n), x - h * np.eye(n)])
        row_targets = targets[b] if isinstance(targets, np.ndarray) and targets.dtype == bool else targets
        f, _ = surrogate_value_and_grad(net, shifted, label, row_targets)
        grads[b] = (f[:n] - f[n:]) / (2 * h)
    return grads


def _target_cases(k: int, label: int, rows: int) -> dict:
    others = [t for t in range(k) if t != label]
    per_row = np.zeros((rows, k), bool)
    per_row[np.arange(rows), np.array(others)[np.arange(rows) % len(others)]] = True
    return {"targeted": others[1], "untargeted": others, "per_row": per_row}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["targeted", "untargeted", "per_row"])
def test_surrogate_gradient_matches_finite_differences(nets, kind, case):
    _, net = nets[kind]
    rng = np.random.default_rng(7)
    X = rng.uniform(0, 1, (40, net.n_inputs))
    label = int(net.predict(X[:1])[0])
    targets = _target_cases(net.n_classes, label, len(X))[case]
    if isinstance(targets, np.ndarray):
        mask = targets
    else:
        mask = np.zeros((len(X), net.n_classes), bool)
        mask[:, targets] = True
    keep = _kink_distance(net, X, label, mask) > 1e-3
    assert keep.sum() >= 10
    X = X[keep]
    targets = targets[keep] if isinstance(targets, np.ndarray) else targets
    f, grad = surrogate_value_and_grad(net, X, label, targets)
    assert f.shape == (len(X),) and grad.shape == X.shape
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, _finite_differences(net, X, label, targets), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["real", "real_weights", "binarized"])
def test_first_surrogate_stage_is_hardtanh_of_batch_norm(nets, kind):
    """With γ < 0 units too, the first stage is hardtanh(BN(pre-activation)) of the raw parameters."""
    params, net = nets[kind]
    X = np.random.default_rng(3).uniform(0, 1, (20, net.n_inputs))
    if kind == "binarized":
        gamma, beta, mean, var = params.input_bn
        pre = X
    else:
        gamma, beta, mean, var = params.batch_norms[0]
        pre = X @ params.weights[0].T
    assert (gamma < 0).any()
    bn = gamma * (pre - mean) / np.sqrt(var + params.bn_eps) + beta
    u, _ = SurrogateStage.of(net.threshold_stages[0]).forward(X)
    live = gamma != 0
    np.testing.assert_allclose(u[:, live], np.clip(bn, -1, 1)[:, live], atol=1e-5)  # float32 in the ONNX file


def test_constant_units_keep_their_exact_value(nets):
    _, net = nets["real"]
    stage = SurrogateStage.of(net.layers[1])
    assert stage.flat.any(), "the fixture should have a γ = 0 unit"
    u, slope = stage.forward(np.random.default_rng(0).uniform(-1, 1, (8, net.layers[1].fan_in)))
    exact = net.forward(np.random.default_rng(1).uniform(0, 1, (8, net.n_inputs))).post[1]
    np.testing.assert_array_equal(u[:, stage.flat], exact[:, stage.flat])
    assert not slope[:, stage.flat].any()


def _saturated(net):
    """``net`` with every BN scale times 1e6: the same BNN, its surrogate saturated almost everywhere."""
    ib = net.input_binarization
    if ib is not None:
        ib = replace(ib, scale=ib.scale * 1e6)
    layers = tuple(replace(layer, scale=layer.scale * 1e6) for layer in net.layers)
    return replace(net, layers=layers, input_binarization=ib)


@pytest.mark.parametrize("kind", KINDS)
def test_saturated_surrogate_is_the_bnn(nets, kind):
    """Saturated, the surrogate's units are the BNN's signs (integer layers centred at θ - 1)."""
    net = _saturated(nets[kind][1])
    X = np.random.default_rng(5).uniform(0, 1, (50, net.n_inputs))
    np.testing.assert_allclose(surrogate_logits(net, X), net.forward(X).logits, atol=1e-9)
    _, grad = surrogate_value_and_grad(net, X, 0, [1, 2])
    assert not grad.any()


# ---------------------------------------------------------------------- the attack
def _assert_verified_flip(net, x, eps, result, levels):
    assert result.status == "adversarial" and result.verified
    assert result.method == "pgd" and result.backend is None
    x_adv = result.x_adv
    assert np.all(np.abs(x_adv - x) <= eps + 1e-9) and x_adv.min() >= 0 and x_adv.max() <= 1
    if levels:
        np.testing.assert_allclose(x_adv * levels, np.rint(x_adv * levels), atol=1e-6)
    onnx_label = int(np.argmax(bnnmip.onnx_logits(net, x_adv)[0]))
    assert onnx_label != result.label and int(net.predict(x_adv)[0]) == result.adv_label != result.label


def test_pgd_flips_are_verified_on_the_grid(grid_nets):
    rng = np.random.default_rng(11)
    flips = 0
    for net in grid_nets:
        x = rng.integers(0, 256, net.n_inputs) / 255
        result = attack(net, x, 0.3, method="pgd", time_limit=5.0, restarts=64)
        assert result.status != "robust"
        if result.status == "adversarial":
            _assert_verified_flip(net, x, 0.3, result, 255)
            flips += 1
    assert flips == len(grid_nets)


@pytest.mark.parametrize("kind", KINDS)
def test_pgd_flips_continuous_inputs_and_targets(nets, kind):
    _, net = nets[kind]
    x = np.random.default_rng(2).uniform(0, 1, net.n_inputs)
    result = pgd_attack(net, x, 0.5, time_limit=5.0)
    _assert_verified_flip(net, x, 0.5, result, None)
    assert result.objective >= 0 and result.trace[-1][1] == result.objective
    target = result.adv_label
    targeted = pgd_attack(net, x, 0.5, target=target, time_limit=5.0)
    assert targeted.target == target and targeted.status == "adversarial"
    logits = net.logits(targeted.x_adv)[0]
    assert logits[target] - logits[targeted.label] >= 0


def test_pgd_finds_flips_on_a_larger_grid_network(tmp_path):
    _, net = _make(tmp_path / "wide.onnx", 42, 196, [50, 50], 10, levels=255)
    rng = np.random.default_rng(0)
    results = [pgd_attack(net, rng.integers(0, 256, 196) / 255, 0.1, time_limit=3.0) for _ in range(5)]
    assert all(r.status == "adversarial" and r.verified for r in results)


def test_pgd_is_deterministic_given_the_seed(grid_nets):
    net = grid_nets[0]
    x = np.random.default_rng(4).integers(0, 256, net.n_inputs) / 255
    runs = [pgd_attack(net, x, 0.02, time_limit=None, restarts=8, steps=10, batch=4, seed=s) for s in (5, 5)]
    assert runs[0].objective == runs[1].objective
    assert [f for _, f in runs[0].trace] == [f for _, f in runs[1].trace]
    assert runs[0].details["iterations"] == runs[1].details["iterations"]


def test_budget_and_time_limit_are_honoured(grid_nets):
    net = grid_nets[1]
    x = np.random.default_rng(6).integers(0, 256, net.n_inputs) / 255
    small = pgd_attack(net, x, 0.0, time_limit=None, restarts=6, steps=5, batch=4)
    assert small.status == "unknown" and small.details["stopped_by"] == "budget"
    assert small.details["restarts"] == 6 and small.details["iterations"] == 10
    t0 = time.perf_counter()
    timed = pgd_attack(net, x, 0.0, time_limit=0.5, restarts=10**9)
    elapsed = time.perf_counter() - t0
    assert timed.status == "unknown" and timed.details["stopped_by"] == "time"
    assert 0.5 <= elapsed < 1.5 and timed.time < 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_vanishing_gradients_fall_back_to_random_steps(nets, kind):
    """A saturated surrogate has no gradient to follow: rows step at random, and flips stay verified."""
    net = _saturated(nets[kind][1])
    x = np.random.default_rng(8).uniform(0, 1, net.n_inputs)
    result = pgd_attack(net, x, 0.05, time_limit=5.0, restarts=8, steps=20, batch=4)
    assert result.status == "unknown" and result.details["stopped_by"] == "budget"
    assert result.details["iterations"] == 40 and result.details["random_steps"] == 40 * 4
    flipped = pgd_attack(net, x, 0.3, time_limit=5.0)
    _assert_verified_flip(net, x, 0.3, flipped, None)


def test_backend_is_accepted_and_ignored(grid_nets):
    net = grid_nets[2]
    x = np.random.default_rng(9).integers(0, 256, net.n_inputs) / 255
    result = attack(net, x, 0.3, method="pgd", backend="scip", time_limit=5.0, target=None)
    assert result.backend is None and result.status == "adversarial"


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"restarts": 0}, "restarts"), ({"steps": -1}, "steps"), ({"batch": 1.5}, "batch"),
        ({"restarts": True}, "restarts"), ({"step_size": -0.1}, "step_size"),
        ({"step_size": float("nan")}, "step_size"), ({"step_size": "big"}, "step_size"),
        ({"seed": -1}, "seed"), ({"seed": "a"}, "seed"), ({"time_limit": 0}, "time_limit"),
        ({"time_limit": "soon"}, "time_limit"), ({"levels": 0}, "levels"), ({"target": 99}, "target"),
        ({"target": "cat"}, "target"),
    ],
)
def test_invalid_arguments_name_the_argument(grid_nets, options, name):
    net = grid_nets[0]
    x = np.full(net.n_inputs, 0.5)
    with pytest.raises(bnnmip.InvalidArgumentError, match=name):
        attack(net, x, 0.1, method="pgd", **options)


def test_invalid_inputs_and_targets(grid_nets):
    net = grid_nets[0]
    x = np.full(net.n_inputs, 0.5)
    label = int(net.predict(x)[0])
    for bad_x in (np.zeros(3), np.full(net.n_inputs, 2.0)):
        with pytest.raises(bnnmip.InvalidArgumentError, match="x"):
            pgd_attack(net, bad_x, 0.1)
    with pytest.raises(bnnmip.InvalidArgumentError, match="eps"):
        pgd_attack(net, x, -0.1)
    with pytest.raises(bnnmip.InvalidArgumentError, match="target"):
        pgd_attack(net, x, 0.1, target=label)
    with pytest.raises(bnnmip.InvalidArgumentError, match="targets"):
        surrogate_value_and_grad(net, x, label, [net.n_classes])
    with pytest.raises(bnnmip.InvalidArgumentError, match="label"):
        surrogate_value_and_grad(net, x, -1, [0])
