"""The fused kernel of ``BNN.logits`` (``bnnmip.fused``) at every batch size attacks use (1, a few, 16, a
few hundred rows): on images, on constant units, on the inputs it hands to the general path (negative,
NaN, infinite, beyond float32), on every zoo model.  Inputs a hair from a threshold: ``test_network.py``."""

from __future__ import annotations

import numpy as np
import pytest

import bnnmip
from bnnmip.io.datasets import load_npz
from tests.helpers import MODELS, shipped_net

SIZES = (1, 2, 3, 16, 17, 256)


@pytest.fixture(scope="module")
def net():
    return shipped_net("fmnist_2x100")


@pytest.fixture(scope="module")
def images():
    return load_npz(MODELS / "fmnist_test100.npz").images


def probe(layer: bnnmip.Layer) -> bnnmip.BNN:
    """A one-layer network whose logits are its first layer's ±1 outputs (identity output layer)."""
    return bnnmip.BNN((layer,), np.eye(layer.width), np.zeros(layer.width))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
def test_logits_equal_forward_on_images(net, images, dtype, size):
    X = (np.tile(images, (3, 1))[:size] / 255).astype(dtype)
    out = np.empty((size, net.n_classes))
    assert net._fused(X, out)  # images go through the fused kernel, not the general path
    fast, exact = net.logits(X), net.forward(X).logits
    np.testing.assert_array_equal(out, fast)
    np.testing.assert_array_equal(np.argmax(fast, 1), np.argmax(exact, 1))
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(net.logits(X.reshape(size, 1, 28, 28)), fast)


@pytest.mark.parametrize("size", [1, 16])
def test_constant_units(net, size):
    first = net.layers[0]
    threshold = first.threshold.copy()
    threshold[:10], threshold[10:20] = np.inf, -np.inf
    p = probe(bnnmip.Layer(first.weight, threshold, first.scale, integer=False))
    X = np.random.default_rng(1).random((size, 784))
    got = p.logits(X)
    np.testing.assert_array_equal(got, p.forward(X).post[0])
    assert np.all(got[:, :10] == -1) and np.all(got[:, 10:20] == 1)


@pytest.mark.parametrize("size", [1, 16])
def test_a_zero_pre_activation_on_a_zero_threshold_is_plus_one(net, size):
    """An all-zero input gives ``a = -0.0`` on a unit whose weights are all -1; ``a >= θ = 0`` all the same."""
    first = net.layers[0]
    weight = first.weight.copy()
    weight[:5] = -1
    p = probe(bnnmip.Layer(weight, np.zeros(first.width), first.scale, integer=False))
    X = np.zeros((size, 784), np.float32)
    X[1:, :3] = 0.5  # other rows: some units off the threshold
    np.testing.assert_array_equal(p.logits(X), p.forward(X).post[0])
    assert np.all(p.logits(X)[0] == 1)


@pytest.mark.parametrize("size", [1, 16])
def test_inputs_for_the_general_path(net, size):
    rng = np.random.default_rng(2)
    X = rng.random((size, 784))
    X[0, :5] = -0.25  # negative: the row sum no longer bounds sum |x|
    out = np.empty((size, net.n_classes))
    assert not net._fused(X, out)
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)
    zeros = np.full((size, 784), -0.0)  # -0.0 >= 0, yet its sign bit is set
    np.testing.assert_allclose(net.logits(zeros), net.forward(zeros).logits, rtol=1e-12, atol=1e-12)
    huge = rng.random((size, 784))
    huge[-1, 3] = 1e300  # beyond float32: that row is decided in float64
    np.testing.assert_allclose(net.logits(huge), net.forward(huge).logits, rtol=1e-12, atol=1e-12)
    for bad in (np.nan, np.inf, -np.inf):
        X = rng.random((size, 784)).astype(np.float32)
        X[-1, 7] = bad
        with pytest.raises(bnnmip.InvalidArgumentError, match="NaN or infinite"):
            net.logits(X)


def test_every_zoo_model_takes_the_fused_path(images):
    X = images[:16] / 255
    for path in sorted(MODELS.glob("*_[0-9]x*.onnx")):
        net = bnnmip.load_onnx(path)
        out = np.empty((16, net.n_classes))
        assert net._fused(X, out), path.name
        np.testing.assert_allclose(out, net.forward(X).logits, rtol=1e-12, atol=1e-12, err_msg=path.name)
