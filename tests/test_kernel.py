"""The compiled forward kernel (``bnnmip.kernel``, ``bnnmip/_kernel.c``) behind ``BNN.logits``: it decides
exactly as ``BNN.forward`` on every zoo model (input binarization included) at the batch sizes attacks use,
flags the rows a hair from a first-layer threshold (built here on the input grid, where its integer
arithmetic is exact up to rounding of the inputs) and hands them, and inputs off the grid, to the float path."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import bnnmip
from bnnmip import kernel
from bnnmip.errors import InvalidArgumentError
from bnnmip.io.datasets import load_npz

MODELS = Path(__file__).resolve().parent.parent / "models"
SIZES = (1, 3, 4, 5, 16, 17, 256)
ZOO = sorted(MODELS.glob("*.onnx"))

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the compiled kernel is not built (pip install -e .)")


def test_the_kernel_is_built_where_there_is_a_compiler():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): BNN.logits runs its numpy path")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers (Python.h): BNN.logits runs its numpy path")
    assert kernel.describe() != "compiled kernel not built", \
        "bnnmip/_kernel.c is not built: run `pip install -e .`"
    if not kernel.available():
        pytest.skip(f"{kernel.describe()}: no AVX2 or AVX-512 VNNI here, so BNN.logits runs its numpy path")


@pytest.fixture(scope="module")
def images():
    return {name: load_npz(MODELS / f"{name}.npz").images for name in ("fmnist_test100", "mnist_test1000")}


def grid_batch(images, model: str, n: int, dtype=np.float32) -> np.ndarray:
    """The model's test images tiled to n rows, on the grid k / 255 (float32 k / 255, as a loader gives them)."""
    pixels = images["fmnist_test100" if model.startswith("fmnist") else "mnist_test1000"]
    tiled = np.tile(pixels, (-(-n // len(pixels)), 1))[:n]
    return (tiled.astype(np.float32) / np.float32(255)).astype(dtype)


def probe(layer: bnnmip.Layer) -> bnnmip.BNN:
    """A one-layer network whose logits are its first layer's ±1 outputs (identity output layer)."""
    return bnnmip.BNN((layer,), np.eye(layer.width), np.zeros(layer.width))


@needs_kernel
@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_every_zoo_model_decides_as_forward(images, path):
    net = bnnmip.load_onnx(path)
    assert net._fast.kernel is not None, "±1 weights everywhere: the kernel computes every zoo model"
    for size in SIZES:
        X = grid_batch(images, path.stem, size)
        out = np.empty((size, net.n_classes))
        assert len(net._fast.kernel(X, out)) == 0  # images on the grid: no row left to the float path
        exact = net.forward(X).logits
        np.testing.assert_array_equal(np.argmax(out, 1), np.argmax(exact, 1))
        np.testing.assert_allclose(out, exact, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(net.logits(X), out)


def _grid_thresholds(layer: bnnmip.Layer, X: np.ndarray, offsets: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds θ_j = a_j(x_r) - offset (exact sums of the float32 inputs), unit j on row r = j mod n.

    On the grid the kernel compares the integer A = Σ w q with 255 θ: an offset of 5e-8 puts them within
    the rounding of the float32 inputs, one of a tenth of a grid step well outside it."""
    theta = layer.threshold.copy()
    rows = np.arange(layer.width) % len(X)
    margins = np.array([offsets[j % len(offsets)] for j in range(layer.width)])
    for j in range(layer.width):
        exact = math.fsum(layer.weight[j].astype(np.float64) * X[rows[j]].astype(np.float64))
        theta[j] = exact - margins[j]
    return theta, rows


@needs_kernel
@pytest.mark.parametrize("size", [1, 16, 256])
def test_units_a_hair_from_a_threshold_on_the_grid(images, size):
    net = bnnmip.load_onnx(MODELS / "fmnist_2x100.onnx")
    first = net.layers[0]
    X = grid_batch(images, "fmnist", size)
    near = [2e-9, -2e-9, 5e-8, -5e-8]  # flagged: within the rounding of the float32 inputs
    between = [1e-6, -1e-6, 1e-5, -1e-5, 1e-4, -1e-4]  # flagged or not, depending on the row's tolerance
    far = [0.1 / 255, -0.1 / 255, 0.4 / 255, -0.4 / 255]  # decided by the kernel
    for offsets, flagged in ((near, True), (between, None), (far, False)):
        theta, rows = _grid_thresholds(first, X, offsets)
        p = probe(bnnmip.Layer(first.weight, theta, first.scale, integer=False))
        exact = p.forward(X).post[0]
        margins = np.array([offsets[j % len(offsets)] for j in range(first.width)])
        np.testing.assert_array_equal(exact[rows, np.arange(first.width)], np.where(margins >= 0, 1, -1))
        out = np.empty((size, first.width))
        left = p._fast.kernel(X, out)
        if flagged:  # every row with a near unit is left to the float path
            assert set(rows) <= set(left.tolist())
        elif flagged is not None:
            assert len(left) == 0
        np.testing.assert_array_equal(p.logits(X), exact)
        # in a deeper network the flagged rows' logits come from the float path, the others' from the kernel
        deep = bnnmip.BNN((p.layers[0], *net.layers[1:]), net.out_weight, net.out_bias)
        np.testing.assert_allclose(deep.logits(X), deep.forward(X).logits, rtol=1e-12, atol=1e-12)


@needs_kernel
def test_rows_off_the_grid_go_to_the_float_path(images):
    net = bnnmip.load_onnx(MODELS / "mnist_2x200.onnx")
    X = grid_batch(images, "mnist", 64)
    X[::2] += np.float32(0.3 / 255)  # every other row a third of a step off the grid
    out = np.empty((64, net.n_classes))
    np.testing.assert_array_equal(net._fast.kernel(X, out), np.arange(0, 64, 2))
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)
    # mostly off the grid, call after call: then the kernel is skipped (and the results stay exact) ...
    Y = np.random.default_rng(0).random((16, 784))
    for _ in range(kernel.MISSES):
        assert len(net._fast.kernel(Y, np.empty((16, net.n_classes)))) > 8
    assert net._fast.kernel(Y, np.empty((16, net.n_classes))) is None
    np.testing.assert_allclose(net.logits(Y), net.forward(Y).logits, rtol=1e-12, atol=1e-12)
    # ... but for every RETRY-th call, which finds the grid again
    calls = [net._fast.kernel(X, out) is not None for _ in range(kernel.RETRY)]
    assert any(calls) and all(calls[calls.index(True) :])


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_outside_the_range(images, dtype):
    net = bnnmip.load_onnx(MODELS / "fmnist_3x100.onnx")
    X = grid_batch(images, "fmnist", 16, dtype)
    X[0, :20], X[1, 100:130], X[2] = -0.25, 1.75, 0  # negative, beyond hi, all zero
    X[3, 5] = 1e39 if dtype == np.float64 else 3e38  # beyond float32's range / near its top
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("model", ["fmnist_ib200-3x100", "mnist_2x100"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_raise(images, model, bad):
    net = bnnmip.load_onnx(MODELS / f"{model}.onnx")
    for size in (1, 16):
        X = grid_batch(images, model, size)
        X[-1, 7] = bad
        with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
            net.logits(X)


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 16, 256])
def test_input_binarization_at_its_thresholds(images, dtype, size):
    """Inputs exactly at, and one float step either side of, the input binarization's thresholds."""
    net = bnnmip.load_onnx(MODELS / "mnist_ib200-3x100.onnx")
    ib = net.input_binarization
    X = grid_batch(images, "mnist", size, dtype)
    finite = np.flatnonzero(np.isfinite(ib.threshold) & (np.abs(ib.threshold) <= 1))
    rng = np.random.default_rng(size)
    for r in range(size):
        cols = rng.choice(finite, 60, replace=False)
        value = (ib.threshold[cols] * ib.direction[cols]).astype(dtype)  # d x = θ (rounded to dtype)
        step = rng.integers(-1, 2, len(cols))
        X[r, cols] = np.where(step < 0, np.nextafter(value, -np.inf), np.where(step > 0, np.nextafter(value, np.inf),
                                                                                value))
    out = np.empty((size, net.n_classes))
    assert len(net._fast.kernel(X, out)) == 0
    exact = net.forward(X)
    np.testing.assert_allclose(out, exact.logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(net.logits(X), out)


@needs_kernel
def test_large_batches_in_threads(images):
    net = bnnmip.load_onnx(MODELS / "mnist_4x100.onnx")
    X = grid_batch(images, "mnist", 5000)
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_batches(images, dtype):
    """A batch in column-major order (a transposed array, as ``np.indices(...).reshape(n, -1).T`` gives)."""
    net = bnnmip.load_onnx(MODELS / "fmnist_2x100.onnx")
    X = np.asfortranarray(grid_batch(images, "fmnist", 300, dtype))
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)


def test_real_valued_weights_take_the_float_path():
    rng = np.random.default_rng(3)
    layer = bnnmip.Layer(rng.normal(size=(8, 20)), rng.normal(size=8), np.ones(8), integer=False)
    net = bnnmip.BNN((layer,), rng.normal(size=(3, 8)), rng.normal(size=3), input_shape=(20,))
    assert net._fast.kernel is None
    X = rng.random((5, 20))
    np.testing.assert_allclose(net.logits(X), net.forward(X).logits, rtol=1e-12, atol=1e-12)


_AVX2_CHECK = """
import sys, numpy as np, bnnmip
from bnnmip.kernel import describe
assert describe() == "compiled kernel (AVX2)", describe()
sys.path.insert(0, {tests!r})
from test_kernel import MODELS, _grid_thresholds, probe
from bnnmip.io.datasets import load_npz
pixels = load_npz(MODELS / "fmnist_test100.npz").images
for name in ("fmnist_2x100", "fmnist_5x100", "fmnist_ib200-3x100"):
    net = bnnmip.load_onnx(MODELS / f"{{name}}.onnx")
    for size in (1, 5, 16, 100):
        X = (pixels[:size].astype(np.float32) / np.float32(255))
        out = np.empty((size, 10))
        assert len(net._fast.kernel(X, out)) == 0
        np.testing.assert_allclose(out, net.forward(X).logits, rtol=1e-12, atol=1e-12)
first = bnnmip.load_onnx(MODELS / "fmnist_2x100.onnx").layers[0]
X = pixels[:16].astype(np.float32) / np.float32(255)
theta, rows = _grid_thresholds(first, X, [2e-9, -2e-9, 0.1 / 255, -0.1 / 255])
p = probe(bnnmip.Layer(first.weight, theta, first.scale, integer=False))
np.testing.assert_array_equal(p.logits(X), p.forward(X).post[0])
print("ok")
"""


@needs_kernel
def test_the_avx2_version_decides_as_forward():
    """The AVX2 version of the kernel (picked where AVX-512 VNNI is missing), forced by $BNNMIP_KERNEL."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or " avx2" not in cpuinfo.read_text():
        pytest.skip("no AVX2 here (or no /proc/cpuinfo to tell)")
    code = _AVX2_CHECK.format(tests=str(Path(__file__).resolve().parent))
    env = {**os.environ, "BNNMIP_KERNEL": "avx2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
