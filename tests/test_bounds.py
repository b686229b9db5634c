"""Interval bounds are sound: every sampled point of the box (or of its grid) has every
pre-activation inside [lower, upper], and every fixed unit takes its fixed sign."""

from __future__ import annotations

import numpy as np
import pytest

import bnnmip
from bnnmip.io.onnx_writer import random_params
from tests.helpers import saved_net, shipped_inputs, shipped_net

SOUNDNESS_MODELS = ("fmnist_2x100", "mnist_3x100", "fmnist_5x100")
N_POINTS = 10_000


def _image(name: str, index: int = 0) -> np.ndarray:
    slice_name = "fmnist_test100" if name.startswith("fmnist") else "mnist_test1000"
    return shipped_inputs(slice_name)[index]


def _box_points(rng, lower, upper, n: int) -> np.ndarray:
    """Points of the box: uniform, and (a third of them) vertices, where interval bounds are tightest."""
    U = rng.random((n, len(lower)))
    U[: n // 3] = U[: n // 3] < 0.5
    return lower + U * (upper - lower)


def _grid_points(rng, x, eps, levels: int, n: int) -> np.ndarray:
    k = np.rint(x * levels)
    k_lo = np.maximum(np.ceil((x - eps) * levels - 1e-9), 0)
    k_hi = np.minimum(np.floor((x + eps) * levels + 1e-9), levels)
    assert np.all(k_lo <= k) and np.all(k <= k_hi)
    K = k_lo + np.floor(rng.random((n, len(x))) * (k_hi - k_lo + 1))
    K[: n // 3] = np.where(rng.random((n // 3, len(x))) < 0.5, k_lo, k_hi)
    return K / levels


def _assert_sound(net, bounds, X):
    acts = net.forward(X)
    assert len(bounds) == len(net.threshold_stages) == len(acts.pre)
    n_fixed = n_free = 0
    for b, a, h in zip(bounds, acts.pre, acts.post, strict=True):
        assert np.all(b.lower <= b.upper)
        assert np.all(a >= b.lower), f"{int(np.sum(a < b.lower))} pre-activations below the lower bound"
        assert np.all(a <= b.upper), f"{int(np.sum(a > b.upper))} pre-activations above the upper bound"
        fixed = b.fixed != 0
        assert np.all(h[:, fixed] == b.fixed[fixed]), "a fixed unit changed sign"
        assert set(np.unique(b.fixed)) <= {-1, 0, 1}
        n_fixed, n_free = n_fixed + int(fixed.sum()), n_free + b.n_free
    return n_fixed, n_free


@pytest.mark.parametrize("name", SOUNDNESS_MODELS)
def test_sound_on_the_box(name):
    net = shipped_net(name)
    x, eps = _image(name), 0.03
    bounds = bnnmip.interval_bounds(net, x, eps)
    lower, upper = np.maximum(x - eps, 0), np.minimum(x + eps, 1)
    X = _box_points(np.random.default_rng(0), lower, upper, N_POINTS)
    n_fixed, n_free = _assert_sound(net, bounds, X)
    assert n_fixed > 0 and n_free > 0  # not a vacuous test


@pytest.mark.parametrize("name", SOUNDNESS_MODELS)
def test_sound_on_the_grid(name):
    net = shipped_net(name, levels=255)
    x, eps = _image(name, 1), 3 / 255
    bounds = bnnmip.interval_bounds(net, x, eps)
    np.testing.assert_array_equal(bounds[0].fixed, bnnmip.interval_bounds(
        shipped_net(name), x, eps, levels=255)[0].fixed)
    X = _grid_points(np.random.default_rng(1), x, eps, 255, N_POINTS)
    n_fixed, n_free = _assert_sound(net, bounds, X)
    assert n_fixed > 0 and n_free > 0


def test_grid_bounds_are_no_looser_than_the_box():
    net = shipped_net("fmnist_2x100")
    x = _image("fmnist_2x100", 2)
    box = bnnmip.interval_bounds(net, x, 2.5 / 255)
    grid = bnnmip.interval_bounds(net, x, 2.5 / 255, levels=255)
    assert np.all(grid[0].lower >= box[0].lower - 1e-9) and np.all(grid[0].upper <= box[0].upper + 1e-9)
    assert grid[-1].n_free <= box[-1].n_free


@pytest.fixture(scope="module")
def binarized_net(tmp_path_factory):
    params = random_params(np.random.default_rng(2), 40, [16, 12], 5, input_binarization=True, zero_gamma=0.1)
    return saved_net(params, tmp_path_factory.mktemp("bounds") / "binarized.onnx")


def test_sound_with_input_binarization(binarized_net):
    net = binarized_net
    ib = net.input_binarization
    rng = np.random.default_rng(3)
    # An input near the binarization thresholds, so that a box of radius eps frees some bits.
    t = np.where(np.isfinite(ib.threshold), ib.threshold * ib.direction, 0.5)
    x = np.clip(t + rng.normal(0, 0.05, net.n_inputs), 0, 1)
    bounds = bnnmip.interval_bounds(net, x, 0.04)
    assert 0 < bounds[0].n_free < net.n_inputs
    lower, upper = np.maximum(x - 0.04, 0), np.minimum(x + 0.04, 1)
    n_fixed, n_free = _assert_sound(net, bounds, _box_points(rng, lower, upper, N_POINTS))
    assert n_fixed > 0 and n_free > 0


@pytest.mark.parametrize("name", ["fmnist_2x100", "mnist_3x100"])
def test_eps_zero_fixes_every_unit(name):
    net = shipped_net(name)
    x = _image(name, 3)
    bounds = bnnmip.interval_bounds(net, x, 0.0)
    acts = net.forward(x)
    for b, h in zip(bounds, acts.post, strict=True):
        assert b.n_free == 0
        np.testing.assert_array_equal(b.fixed, h[0])


def test_eps_zero_with_input_binarization(binarized_net):
    x = np.random.default_rng(4).random(binarized_net.n_inputs)
    bounds = bnnmip.interval_bounds(binarized_net, x, 0)
    assert all(b.n_free == 0 for b in bounds)
    for b, h in zip(bounds, binarized_net.forward(x).post, strict=True):
        np.testing.assert_array_equal(b.fixed, h[0])


@pytest.mark.parametrize("eps", [-0.01, float("nan"), float("inf"), -np.inf, "wide", None])
def test_bad_eps(eps):
    net = shipped_net("fmnist_2x100")
    with pytest.raises(bnnmip.InvalidArgumentError, match="eps"):
        bnnmip.interval_bounds(net, _image("fmnist_2x100"), eps)


def test_bad_point():
    net = shipped_net("fmnist_2x100")
    x = _image("fmnist_2x100")
    with pytest.raises(bnnmip.InvalidArgumentError, match="outside the input range"):
        bnnmip.interval_bounds(net, x + 2, 0.01)
    with pytest.raises(bnnmip.InvalidArgumentError, match="one input"):
        bnnmip.interval_bounds(net, np.stack([x, x]), 0.01)
    with pytest.raises(bnnmip.InvalidArgumentError, match="NaN"):
        bnnmip.interval_bounds(net, np.full(784, np.nan), 0.01)
    with pytest.raises(bnnmip.InvalidArgumentError, match="levels"):
        bnnmip.interval_bounds(net, x, 0.01, levels=0)
