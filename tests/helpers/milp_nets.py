"""Tiny random BNNs whose truth brute force can enumerate: shared by the MILP, backend and system tests.

Each :class:`TinyCase` is a network written to ONNX by :func:`bnnmip.io.onnx_writer.to_onnx` (so
the original-graph check in onnxruntime runs), loaded back on a grid of ``levels`` steps, with
one clean input on the grid and the prediction at every point of the whole grid.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bnnmip import MilpModel, attack, attack_milp, minimal_eps
from bnnmip.io.onnx_writer import random_params
from bnnmip.io.runtime import onnx_logits
from bnnmip.network import BNN
from tests.helpers import saved_net


@dataclass(frozen=True, eq=False)
class TinyCase:
    """One tiny network, one clean input, and brute-force truth over the whole input grid."""

    seed: int
    net: BNN
    x: np.ndarray  # on the grid
    levels: int
    grid: np.ndarray  # (levels + 1) ** n points, in grid steps
    logits: np.ndarray  # bnnmip's exact logits at every grid point
    label: int

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=1)

    @property
    def step(self) -> float:
        return 1.0 / self.levels

    def distances(self) -> np.ndarray:
        """L∞ distance (in steps) from the clean input to every grid point."""
        k0 = np.rint(self.x * self.levels)
        return np.abs(self.grid - k0).max(axis=1)

    def min_flip_radius(self) -> int | None:
        """The smallest radius (steps) at which some grid point changes the prediction; None: none does."""
        flips = self.predictions != self.label
        return int(self.distances()[flips].min()) if flips.any() else None

    def flip_within(self, radius: int) -> bool:
        return bool(np.any((self.predictions != self.label) & (self.distances() <= radius)))

    def best_objective(self, radius: int, target: int) -> float:
        """Brute-force optimum of the attack MILP: max of logit[target] - logit[label] within ``radius``."""
        inside = self.distances() <= radius
        return float((self.logits[inside, target] - self.logits[inside, self.label]).max())

    def describe(self) -> str:
        if self.net.input_binarization is not None:
            first = "input binarization"
        else:
            first = "±1 first layer" if self.net.layers[0].binary_weights else "real first layer"
        return (f"seed={self.seed}: {self.net.n_inputs} inputs on {self.levels} levels, widths {self.net.widths}, "
                f"{first}, x={np.rint(self.x * self.levels).astype(int).tolist()}, label {self.label}")


def tiny_case(seed: int, folder: Path) -> TinyCase:
    """A random tiny BNN (4-6 inputs, 2-3 layers of width 3-8, BN with γ < 0 and γ = 0, with input
    binarization, with ±1 first-layer weights, or with real ones) on a grid of 3-5 levels, and its
    brute-force truth."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 7))
    widths = [int(w) for w in rng.integers(3, 9, size=int(rng.integers(2, 4)))]
    levels = int(rng.integers(3, 6))
    kind = rng.random()
    ib, real = bool(kind < 0.35), bool(kind > 0.85)
    params = random_params(rng, n, widths, int(rng.integers(2, 5)), input_binarization=ib, real_first_layer=real,
                           zero_gamma=0.1, negative_gamma=0.3)
    net = saved_net(params, folder / f"tiny_{seed}.onnx", levels=levels)
    grid = np.indices((levels + 1,) * n).reshape(n, -1).T.astype(np.float64)
    logits = net.logits(grid / levels)
    # The truth must not depend on float32 rounding: onnxruntime agrees at every grid point.
    ort = np.argmax(onnx_logits(net, grid / levels), axis=1)
    if not np.array_equal(ort, np.argmax(logits, axis=1)):
        raise AssertionError(f"seed={seed}: bnnmip and onnxruntime disagree on the grid; fix the generator")
    predictions = np.argmax(logits, axis=1)
    candidates = rng.integers(0, len(grid), 1 if rng.random() < 0.5 else 30)
    # Half the cases take the clean input deepest inside its class among 30 random grid points,
    # so that minimal radii above 1 are common.
    depth = [_flip_radius(grid, predictions, int(i)) for i in candidates]
    x = grid[candidates[int(np.argmax(depth))]] / levels
    return TinyCase(seed, net, x, levels, grid, logits, int(net.predict(x)[0]))


def _flip_radius(grid: np.ndarray, predictions: np.ndarray, i: int) -> float:
    other = predictions != predictions[i]
    return float(np.abs(grid[other] - grid[i]).max(axis=1).min()) if other.any() else np.inf


_FOLDER = tempfile.TemporaryDirectory(prefix="bnnmip_tiny_")  # removed when the test process exits
_CACHE: dict[int, TinyCase] = {}


def cached_case(seed: int) -> TinyCase:
    """:func:`tiny_case`, built once per test process (several test files use the same networks)."""
    if seed not in _CACHE:
        _CACHE[seed] = tiny_case(seed, Path(_FOLDER.name))
    return _CACHE[seed]


def continuous_case(seed: int, folder: Path, *, real_first_layer: bool = False) -> tuple[BNN, np.ndarray]:
    """A tiny BNN on continuous inputs (no grid) and a random clean input."""
    rng = np.random.default_rng(10_000 + seed)
    n = int(rng.integers(3, 6))
    widths = [int(w) for w in rng.integers(3, 7, size=int(rng.integers(2, 4)))]
    ib = bool(rng.random() < 0.3) and not real_first_layer  # real weights after binarized inputs: not a BNN
    params = random_params(rng, n, widths, int(rng.integers(2, 4)), input_binarization=ib,
                           real_first_layer=real_first_layer, zero_gamma=0.1)
    return saved_net(params, folder / f"cont_{seed}.onnx"), rng.random(n)


def small_model(sense: str = "max", offset: float = 5.0, *, integer: bool = False) -> MilpModel:
    r"""max 3x + 2y - z + 5:  x + y <= 4.5,  1 <= x - z <= 3,  y + z = 2;  x in {0..3}, y binary, z free.

    ``integer``: the same problem as an ``integer_only`` backend takes it, with the same optimum
    (z an integer in -10..10, the row bound 4.5 as 4: x and y are integers)."""
    A = sp.csr_matrix(np.array([[1.0, 1, 0], [1, 0, -1], [0, 1, 1]]))
    z = (-10, 10, True) if integer else (-np.inf, np.inf, False)
    return MilpModel(np.array([0, 0, z[0]]), np.array([3, 1, z[1]]), np.array([True, True, z[2]]), A,
                     np.array([-np.inf, 1, 2]), np.array([4 if integer else 4.5, 3, 2]), np.array([3.0, 2, -1]),
                     offset, sense)


# ------------------------------------------------------------------ checks shared by the test files
def radii(c: TinyCase) -> list[tuple[int, bool]]:
    """(radius, flip exists) pairs to check: both sides of r*, or the whole range without a flip."""
    r_star = c.min_flip_radius()
    if r_star is None:
        return [(c.levels, False)]
    return [(r_star - 1, False), (r_star, True)]


def check_attacks(c: TinyCase, backend: str, **options) -> None:
    for r, flip in radii(c):
        result = attack(c.net, c.x, r * c.step, method="milp", backend=backend, time_limit=60, **options)
        where = f"{c.describe()}; radius {r} ({'a flip exists' if flip else 'no flip exists'}), backend {backend}"
        if flip:
            assert result.status == "adversarial", f"{where}: attack says {result.status} ({result.message})"
            assert result.verified, f"{where}: adversarial input not verified by onnxruntime"
            assert np.abs(result.x_adv - c.x).max() <= r * c.step + 1e-9, f"{where}: x_adv outside the box"
            assert result.adv_label != c.label
        else:
            assert result.status == "robust", f"{where}: attack says {result.status} ({result.message})"


def check_minimal_eps(c: TinyCase, backend: str, **options) -> None:
    r_star = c.min_flip_radius()
    result = minimal_eps(c.net, c.x, levels=c.levels, backend=backend, time_limit=60, **options)
    where = f"{c.describe()}, backend {backend}: minimal_eps {result.decisions}"
    assert result.exact, f"{where}: not exact ({result.message})"
    assert result.steps == r_star, f"{where}: {result.steps} steps, brute force {r_star}"
    if r_star is not None:
        assert result.verified and result.adv_label != c.label, where
        assert np.isclose(result.eps, r_star / c.levels)
        assert np.abs(result.x_adv - c.x).max() <= result.eps + 1e-9, where
        assert result.proven_robust_below == r_star == result.found_adversarial_at, where


def check_continuous_verdict(net: BNN, x: np.ndarray, eps: float, label: int, result, rng: np.random.Generator,
                             where: str, *, onnx_rows: int = 0) -> None:
    """A verdict on a continuous box (no grid): an adversarial input verified, with another label, inside
    the box; 'robust' surviving 20,000 uniform samples and every vertex of the box in bnnmip's forward
    pass (and the first ``onnx_rows`` samples in onnxruntime)."""
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    if result.status == "adversarial":
        assert result.verified and result.adv_label != label, where
        assert np.all(result.x_adv >= lo - 1e-12) and np.all(result.x_adv <= hi + 1e-12), where
    elif result.status == "robust":
        vertices = np.array(list(itertools.product(*zip(lo, hi))))
        samples = np.vstack([rng.uniform(lo, hi, size=(20_000, len(x))), vertices])
        flips = net.predict(samples) != label
        assert not flips.any(), f"{where}: 'robust' but {int(flips.sum())} sampled inputs flip"
        if onnx_rows:
            assert not np.any(np.argmax(onnx_logits(net, samples[:onnx_rows]), axis=1) != label), where


def check_optimum(c: TinyCase, backend: str, solver: str | None = None, **options) -> None:
    """One targeted MILP (the class with the largest brute-force objective) solved to optimality."""
    r = c.min_flip_radius() or c.levels
    targets = [t for t in range(c.net.n_classes) if t != c.label]
    target = max(targets, key=lambda t: c.best_objective(r, t))
    model = attack_milp(c.net, c.x, r * c.step, target, **options)
    solution = model.solve(backend, solver=solver)
    where = f"{c.describe()}; radius {r}, target {target}, backend {backend}/{solver}"
    assert solution.status == "optimal", f"{where}: {solution.status} {solution.message}"
    truth = c.best_objective(r, target)
    assert solution.objective == pytest.approx(truth, abs=1e-6), f"{where}: optimum {solution.objective} != {truth}"
    assert solution.bound == pytest.approx(truth, abs=1e-6), f"{where}: bound {solution.bound} != {truth}"
