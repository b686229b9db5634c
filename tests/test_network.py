"""The BNN representation: batch shapes, the fast ``logits`` path against the exact ``forward``
(on random and on adversarially near-threshold inputs), threads and BLAS limits, display, and
argument errors."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading

import numpy as np
import pytest

import bnnmip
from bnnmip.io.onnx_writer import random_params
from bnnmip.threads import CHUNK_ROWS, PARALLEL_ROWS, chunk_rows, single_threaded_blas
from tests.helpers import MODELS, saved_net, shipped_net


@pytest.fixture(scope="module")
def net():
    return shipped_net("fmnist_2x100")


@pytest.fixture(scope="module")
def small_nets(tmp_path_factory):
    """Random nets: ±1 first layer, real-valued first layer, input binarization; γ < 0 and γ = 0 units."""
    folder = tmp_path_factory.mktemp("network")
    nets = {}
    for seed, kind in enumerate(("pm1", "real_weights", "binarized")):
        params = random_params(np.random.default_rng(seed), 30, [16, 12, 9], 5, real_first_layer=kind == "real_weights",
                               input_binarization=kind == "binarized", zero_gamma=0.1, negative_gamma=0.4)
        nets[kind] = saved_net(params, folder / f"{kind}.onnx")
    return nets


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(7, 784), (7, 1, 28, 28)])
def test_batch_shapes(net, shape):
    X = np.random.default_rng(0).random(shape)
    acts = net.forward(X)
    assert acts.logits.shape == (7, 10)
    assert [p.shape for p in acts.pre] == [(7, 100), (7, 100)]
    assert all(h.dtype == np.int8 and set(np.unique(h)) <= {-1, 1} for h in acts.post)
    assert len(acts.hidden) == net.depth == 2
    assert net.logits(X).shape == (7, 10) and net.logits(X).dtype == np.float64
    assert net.predict(X).shape == (7,)
    np.testing.assert_array_equal(net.logits(X), net.logits(X.reshape(7, 784)))


@pytest.mark.parametrize("shape", [(784,), (1, 28, 28)])
def test_single_input(net, shape):
    x = np.random.default_rng(1).random(784)
    assert net.logits(x.reshape(shape)).shape == (1, 10)
    assert net.forward(x.reshape(shape)).logits.shape == (1, 10)
    np.testing.assert_array_equal(net.predict(x.reshape(shape)), net.predict(x[None]))


def test_empty_batch(net):
    assert net.logits(np.zeros((0, 784))).shape == (0, 10)
    assert net.predict(np.zeros((0, 784), np.float32)).shape == (0,)


# ---------------------------------------------------------------------- logits == forward
def _agree(net, X):
    fast, exact = net.logits(X), net.forward(X).logits
    np.testing.assert_array_equal(np.argmax(fast, 1), np.argmax(exact, 1))
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_logits_agree_with_forward_on_random_inputs(net, dtype):
    rng = np.random.default_rng(2)
    n = PARALLEL_ROWS + 17  # several chunks, on several threads, and a ragged last one
    X = rng.integers(0, 256, (n, 784)) if dtype == np.uint8 else rng.random((n, 784))
    _agree(net, X.astype(dtype))


def test_logits_agree_outside_the_input_range(net, small_nets):
    rng = np.random.default_rng(3)
    X = rng.normal(0, 3, (600, 784))
    X[5, 7] = 1e300  # beyond float32: that row is recomputed in float64
    X[6] = -1e-30
    _agree(net, X)
    for other in small_nets.values():
        _agree(other, rng.normal(0.5, 2, (600, 30)))


def test_logits_agree_on_small_nets(small_nets):
    rng = np.random.default_rng(4)
    for other in small_nets.values():
        for X in (rng.random((1500, 30)), rng.random((40, 30)).astype(np.float32)):
            _agree(other, X)


def _near_threshold_inputs(layer, rng, n: int, offsets, dtype):
    """Inputs in [0, 1] whose pre-activation at a random unit j is within 1e-7 of its threshold.

    One coordinate is moved so that ``w_j . x`` lands at ``θ_j + offset``; the exact margin is
    then recomputed with ``math.fsum`` (products by ±1 weights are exact).  Margins below 1e-10
    are skipped: there float64 rounding (the reference ``forward``) may decide either way.
    Returns the inputs, the units and the exact margins.
    """
    W, theta = layer.weight.astype(np.float64), layer.threshold
    X, units, margins = [], [], []
    while len(X) < n:
        j = int(rng.integers(layer.width))
        x = rng.random(layer.fan_in).astype(dtype).astype(np.float64)
        i = int(rng.integers(layer.fan_in))
        x[i] += W[j, i] * (theta[j] + offsets[len(X) % len(offsets)] - math.fsum(W[j] * x))
        if not 0 <= x[i] <= 1:
            continue
        x = x.astype(dtype).astype(np.float64)
        margin = math.fsum(np.append(W[j] * x, -theta[j]))
        if 1e-10 <= abs(margin) <= 1e-7:
            X.append(x)
            units.append(j)
            margins.append(margin)
    return np.array(X).astype(dtype), np.array(units), np.array(margins)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_exact_on_near_threshold_inputs(net, dtype):
    layer = net.layers[0]
    assert layer.binary_weights and not layer.integer
    rng = np.random.default_rng(5)
    X, units, margins = _near_threshold_inputs(layer, rng, 400, [5e-8, -5e-8, 2e-9, -2e-9], dtype)
    assert np.sum(margins >= 0) > 50 and np.sum(margins < 0) > 50
    exact = np.where(margins >= 0, 1, -1)
    rows = np.arange(len(X))
    reference = net.forward(X).post[0]
    np.testing.assert_array_equal(reference[rows, units], exact)
    fast = layer.signs(X.astype(np.float32), None if dtype == np.float32 else X)
    np.testing.assert_array_equal(fast[rows, units], exact)
    np.testing.assert_array_equal(fast, reference)
    _agree(net, X)
    # Without the float64 recomputation, float32 rounding does decide some of these wrongly.
    plain = np.where(X.astype(np.float32) @ layer._weight_f32 >= layer.threshold.astype(np.float32), 1, -1)
    assert np.any(plain[rows, units] != exact)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_near_threshold_decisions_are_exact_at_attack_batch_sizes(net, dtype):
    """The fused kernel (``bnnmip.fused``) decides these units exactly in batches of 1 to 256 rows too
    (through a one-layer probe network whose logits are its ±1 outputs)."""
    layer = net.layers[0]
    X, units, margins = _near_threshold_inputs(layer, np.random.default_rng(11), 256, [5e-8, -5e-8, 2e-9, -2e-9],
                                               dtype)
    probe = bnnmip.BNN((layer,), np.eye(layer.width), np.zeros(layer.width))
    reference = probe.forward(X).post[0]
    np.testing.assert_array_equal(reference[np.arange(len(X)), units], np.where(margins >= 0, 1, -1))
    for size in (1, 2, 16, 17, 256):
        got = np.vstack([probe.logits(X[s : s + size]) for s in range(0, len(X) if size > 1 else 48, size)])
        np.testing.assert_array_equal(got, reference[: len(got)], err_msg=f"batches of {size}")


def test_few_units_are_recomputed(net):
    """The float64 recomputation is the exception; constant units (infinite thresholds) never need it."""
    rng = np.random.default_rng(10)
    first = net.layers[0]
    threshold = first.threshold.copy()
    threshold[:10], threshold[10:20] = np.inf, -np.inf
    with_constants = bnnmip.Layer(first.weight, threshold, first.scale, integer=False)
    X = rng.random((2000, 784)).astype(np.float32)
    for layer in (first, with_constants):
        margin = X @ layer._weight_f32 - layer._threshold_f32
        rows, _ = layer._near_threshold(margin, np.abs(X).sum(axis=1))
        assert len(rows) < 0.01 * margin.size
    exact = np.where(X.astype(np.float64) @ first.weight.T.astype(np.float64) >= threshold, 1, -1)
    np.testing.assert_array_equal(with_constants.signs(X), exact)
    assert np.all(exact[:, :10] == -1) and np.all(exact[:, 10:20] == 1)


def test_integer_layers_are_exact(small_nets):
    net = small_nets["binarized"]
    layer = net.layers[1]
    assert layer.integer
    H = np.random.default_rng(6).choice([-1.0, 1.0], (2000, layer.fan_in))
    exact = np.where(H @ layer.weight.T.astype(np.float64) >= layer.threshold, 1, -1)
    np.testing.assert_array_equal(layer.signs(H.astype(np.float32)), exact)
    assert np.all(np.mod(layer.threshold - layer.fan_in, 2) == 0)  # parity-exact thresholds


# ---------------------------------------------------------------------- threads and BLAS
def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_chunks():
    assert chunk_rows(1) == 1 and chunk_rows(0) == 1 and chunk_rows(PARALLEL_ROWS - 1) == CHUNK_ROWS
    assert chunk_rows(10_000_000) == CHUNK_ROWS
    assert 0 < chunk_rows(PARALLEL_ROWS) <= CHUNK_ROWS


def test_blas_limit_is_restored(net):
    before = _blas_threads()
    with single_threaded_blas():
        assert all(t == 1 for t in _blas_threads())
        with single_threaded_blas():
            pass
        assert all(t == 1 for t in _blas_threads())
    net.logits(np.random.default_rng(7).random((2 * CHUNK_ROWS, 784)))
    assert _blas_threads() == before


def test_concurrent_callers(net):
    X = np.random.default_rng(8).random((PARALLEL_ROWS, 784))
    expected = net.logits(X)
    results, before = [None] * 4, _blas_threads()

    def call(k):
        results[k] = net.logits(X)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)
    assert _blas_threads() == before


def _child(conn, path):
    net = bnnmip.load_onnx(path)
    conn.send(net.logits(np.full((PARALLEL_ROWS, 784), 0.5))[0].tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_logits_after_fork(net):
    net.logits(np.zeros((PARALLEL_ROWS, 784)))  # the parent's thread pool exists now
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, str(MODELS / "fmnist_2x100.onnx")))
    proc.start()
    try:
        assert parent.poll(60), "a forked child's logits() hung"
        np.testing.assert_allclose(parent.recv(), net.logits(np.full((1, 784), 0.5))[0])
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# ---------------------------------------------------------------------- display
def test_summary_and_repr(net, small_nets):
    text = net.summary()
    for part in ("fmnist_2x100.onnx", "784 values (1, 28, 28) in [0, 1]",
                 "layer 1    784 -> 100, ±1 weights, real inputs",
                 "layer 2    100 -> 100, ±1 weights, ±1 inputs, integer parity-exact thresholds",
                 "100 -> 10 logits", "ties       sign(0) = +1", f"params     {net.n_params:,}"):
        assert part in text, part
    assert "binarize" not in text
    assert repr(net) == "BNN(784 -> 100x100 -> 10, sign(0) = +1)"
    binarized = small_nets["binarized"]
    assert "binarize   30 input bits" in binarized.summary()
    assert "input binarization" in repr(binarized)
    assert "real weights" in small_nets["real_weights"].summary()
    grid = shipped_net("fmnist_2x100", levels=255)
    assert "grid of 255 steps" in grid.summary()


def test_structure(net):
    assert net.widths == [100, 100] and net.n_inputs == 784 and net.n_classes == 10
    assert net.layers[0].weight.dtype == np.int8 and net.layers[1].weight.dtype == np.int8
    assert all(np.all(layer.scale >= 0) for layer in net.layers)
    assert net.n_params == 784 * 100 + 100 * 100 + 10 * 100 + 2 * 100 + 10


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("shape", [(3, 783), (3, 28, 28), (3, 1, 28, 27), (783,), (3, 784, 1), ()])
def test_bad_shapes(net, shape):
    X = np.zeros(shape)
    for fn in (net.forward, net.logits, net.predict):
        with pytest.raises(bnnmip.InvalidArgumentError, match="shape"):
            fn(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_inputs(net, bad, dtype):
    X = np.random.default_rng(9).random((PARALLEL_ROWS + 3, 784)).astype(dtype)
    X[PARALLEL_ROWS - 2, 17] = bad  # in a late chunk, possibly on a helper thread
    for fn in (net.forward, net.logits, net.predict):
        with pytest.raises(bnnmip.InvalidArgumentError, match="NaN or infinite"):
            fn(X)


def test_non_numbers(net):
    with pytest.raises(bnnmip.InvalidArgumentError, match="expected numbers"):
        net.logits(np.array([["a"] * 784]))
    with pytest.raises(bnnmip.InvalidArgumentError):
        net.forward([[None] * 784])
    assert issubclass(bnnmip.InvalidArgumentError, bnnmip.BnnmipError)
