r"""Interval bounds on every pre-activation over an L∞ box: the big-M constants of the MILP.

Over the perturbation box of :mod:`bnnmip.box` (snapped inwards to the input grid when there is one):

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

from .box import InputBox, input_box
from .network import BNN, Layer


class LayerBounds(NamedTuple):
    """Bounds of one threshold stage: ``lower <= a <= upper``; ``fixed`` is +1 / -1 / 0 (free)."""

    lower: np.ndarray
    upper: np.ndarray
    fixed: np.ndarray  # int8

    @property
    def n_free(self) -> int:
        return int(np.count_nonzero(self.fixed == 0))


def _real_bounds(weight: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W = weight.astype(np.float64)
    pos, neg = np.maximum(W, 0), np.minimum(W, 0)
    L, U = pos @ lower + neg @ upper, pos @ upper + neg @ lower
    slack = 1e-12 * (np.abs(W) @ np.maximum(np.abs(lower), np.abs(upper)) + 1.0)
    return L - slack, U + slack


def fix_units(lower: np.ndarray, upper: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """+1 where ``lower >= threshold`` (always on), -1 where ``upper < threshold`` (always off), else 0 (free)."""
    return np.where(lower >= threshold, 1, np.where(upper < threshold, -1, 0)).astype(np.int8)


def stage_bounds(layer: Layer, prev: LayerBounds | None, box: InputBox | None) -> tuple[np.ndarray, np.ndarray]:
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
        out.append(LayerBounds(L, U, fix_units(L, U, ib.threshold)))
    for layer in net.layers:
        L, U = stage_bounds(layer, out[-1] if out else None, box)
        out.append(LayerBounds(L, U, fix_units(L, U, layer.threshold)))
    return out


def propagate_bounds(net: BNN, stage: int, bounds: LayerBounds) -> list[LayerBounds]:
    """Interval bounds of the stages after ``stage`` (of ``net.threshold_stages``) from that stage's bounds.

    Only the ±1 stages after it are computed (their bounds depend on the fixed pattern of the stage
    before, not on the box): what branch-and-bound re-runs below a node that fixes some units.
    """
    out = [bounds]
    for layer in net.threshold_stages[stage + 1:]:
        L, U = stage_bounds(layer, out[-1], None)
        out.append(LayerBounds(L, U, fix_units(L, U, layer.threshold)))
    return out[1:]
