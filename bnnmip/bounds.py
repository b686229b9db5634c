r"""Interval bounds on every pre-activation over an L∞ box: the big-M constants of the MILP.

Perturbation box: :math:`lo_i = \max(x_i - \varepsilon, lo)`, :math:`hi_i = \min(x_i + \varepsilon, hi)`,
snapped inwards to the input grid when the network has one.

* real-valued layer: :math:`L_j = \sum_i \min(w_{ji} lo_i, w_{ji} hi_i)`, :math:`U_j = \sum_i \max(\cdot)`;
* input binarization: :math:`[\min(d_j lo_j, d_j hi_j), \max(\cdot)]`;
* ±1 layer: :math:`L_j = \sum_{i\ \mathrm{fixed}} w_{ji} h_i - \#\mathrm{free}`, :math:`U_j = \ldots + \#\mathrm{free}`.

A unit is fixed at +1 when :math:`L_j \ge \theta_j`, at -1 when :math:`U_j < \theta_j`, free (0) otherwise.
Real-valued bounds are widened by a rounding allowance, so a fixed unit is fixed for every input
of the box whatever the floating-point summation order.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InvalidArgumentError
from .network import BNN, Layer

_GRID_TOL = 1e-9  # in grid steps: eps = 2/255 must reach the point two steps away


class LayerBounds(NamedTuple):
    """Bounds of one threshold stage: ``lower <= a <= upper``; ``fixed`` is +1 / -1 / 0 (free)."""

    lower: np.ndarray
    upper: np.ndarray
    fixed: np.ndarray  # int8

    @property
    def n_free(self) -> int:
        return int(np.count_nonzero(self.fixed == 0))


class InputBox(NamedTuple):
    """The perturbation box; on a grid also in integer steps ``k`` with ``value = lo + k * step``."""

    lower: np.ndarray
    upper: np.ndarray
    k_lower: np.ndarray | None = None
    k_upper: np.ndarray | None = None
    step: float | None = None


def check_eps(eps) -> float:
    """``eps`` as a float; a clear error when it is negative, NaN or not a number."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"eps={eps!r}: expected a number") from None
    if not np.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"eps={eps!r}: expected a finite number >= 0")
    return value


def check_input(net: BNN, x) -> np.ndarray:
    """One input as a flat float64 vector inside the network's input range."""
    X = net.as_batch(x, name="x")
    if len(X) != 1:
        raise InvalidArgumentError(f"x: expected one input, got a batch of {len(X)}")
    lo, hi = net.input_range
    tol = 1e-9 * (hi - lo)
    if X.min() < lo - tol or X.max() > hi + tol:
        raise InvalidArgumentError(
            f"x: values range over [{X.min():g}, {X.max():g}], outside the input range [{lo:g}, {hi:g}]"
        )
    return np.clip(X[0], lo, hi)


def check_levels(levels) -> int | None:
    if levels is None:
        return None
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise InvalidArgumentError(f"levels={levels!r}: expected a positive integer or None")
    return int(levels)


def input_box(net: BNN, x, eps, levels: int | None = None) -> InputBox:
    """The L∞ ball of radius ``eps`` around ``x``, clipped to the input range.

    On a grid (``levels``, default the network's own) the box holds the grid points within
    ``eps`` of ``x``, and also says which steps ``k`` they are.
    """
    x, eps = check_input(net, x), check_eps(eps)
    levels = check_levels(levels) or net.levels
    lo, hi = net.input_range
    lower, upper = np.maximum(x - eps, lo), np.minimum(x + eps, hi)
    if levels is None:
        return InputBox(lower, upper)
    step = (hi - lo) / levels
    k_lower = np.ceil((lower - lo) / step - _GRID_TOL).astype(np.int64)
    k_upper = np.floor((upper - lo) / step + _GRID_TOL).astype(np.int64)
    if np.any(k_lower > k_upper):
        i = int(np.flatnonzero(k_lower > k_upper)[0])
        raise InvalidArgumentError(f"x: input {i} = {x[i]!r} has no grid point within eps={eps:g}")
    return InputBox(lo + k_lower * step, lo + k_upper * step, k_lower, k_upper, step)


def _real_bounds(weight: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W = weight.astype(np.float64)
    pos, neg = np.maximum(W, 0), np.minimum(W, 0)
    L, U = pos @ lower + neg @ upper, pos @ upper + neg @ lower
    slack = 1e-12 * (np.abs(W) @ np.maximum(np.abs(lower), np.abs(upper)) + 1.0)
    return L - slack, U + slack


def _fix(lower: np.ndarray, upper: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    return np.where(lower >= threshold, 1, np.where(upper < threshold, -1, 0)).astype(np.int8)


def stage_bounds(layer: Layer, prev: LayerBounds | None, box: InputBox) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of one layer's pre-activation from the previous stage's fixed units (or the box)."""
    if not layer.integer:
        return _real_bounds(layer.weight, box.lower, box.upper)
    fixed = prev.fixed.astype(np.float64)
    center = layer.weight @ fixed
    n_free = np.count_nonzero(prev.fixed == 0)
    return center - n_free, center + n_free


def interval_bounds(net: BNN, x, eps, levels: int | None = None) -> list[LayerBounds]:
    """Interval bounds of every threshold stage over the box of radius ``eps`` around ``x``.

    Returns one :class:`LayerBounds` per entry of ``net.threshold_stages`` (the input
    binarization first, if the network has one, then the hidden layers).
    """
    return interval_bounds_from_box(net, input_box(net, x, eps, levels))


def interval_bounds_from_box(net: BNN, box: InputBox) -> list[LayerBounds]:
    """:func:`interval_bounds` for a box already computed."""
    out: list[LayerBounds] = []
    ib = net.input_binarization
    if ib is not None:
        a, b = box.lower * ib.direction, box.upper * ib.direction
        L, U = np.minimum(a, b), np.maximum(a, b)
        out.append(LayerBounds(L, U, _fix(L, U, ib.threshold)))
    for layer in net.layers:
        L, U = stage_bounds(layer, out[-1] if out else None, box)
        out.append(LayerBounds(L, U, _fix(L, U, layer.threshold)))
    return out
