r"""The exact big-M rows of every threshold stage, written over the free inputs only.

For a free unit :math:`j` with pre-activation :math:`s_j = \sum_{i\ \mathrm{free}} w_{ji} v_i` over
its free inputs (the fixed ones folded into its threshold :math:`\theta'_j`):

* ±1 layers: :math:`v = b` (:math:`h = 2b - 1`, so :math:`a = c + 2s`), :math:`\theta' = (\theta - c)/2`
  is an integer and :math:`\delta = 1`: exact, no tolerance;
* a ±1 first layer on the input grid: :math:`v = k` (integer grid steps), :math:`\theta'` rounded up
  to an integer, :math:`\delta = 1`: exact;
* otherwise (continuous inputs, or real weights): :math:`v = x` (or grid steps with coefficients
  :math:`w \cdot` step), :math:`\delta = m` = ``margin``.

With input binarization, a free input bit needs no pixel variable at all: each bit depends on
its own pixel only, so any bit pattern is reachable and the pixels are chosen afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import LayerBounds
from ..box import InputBox
from ..network import BNN, Layer
from .builder import ModelBuilder, UnitRows

TAU_TOL = 1e-9  # rounding allowance before a real threshold is rounded to an integer


@dataclass(frozen=True)
class StageLayout:
    """Where :func:`add_stages` put things: pixel columns, and per stage the column of each unit (-1: fixed)."""

    pixel_cols: np.ndarray
    grid_pixels: bool
    stage_cols: list[np.ndarray]
    stage_names: tuple[str, ...]


def stage_names(net: BNN) -> tuple[str, ...]:
    """Column-name prefixes of the threshold stages: ``z`` for input bits, ``h1 .. hD``."""
    return (("z",) if net.input_binarization is not None else ()) + tuple(f"h{i}" for i in range(1, net.depth + 1))


def add_stages(b: ModelBuilder, net: BNN, box: InputBox, base: np.ndarray, bounds: list[LayerBounds],
               margin: float, n_stages: int) -> StageLayout:
    """Columns and big-M rows of the first ``n_stages`` threshold stages (pixels first).

    The attack MILP uses every stage; LP bound tightening (:mod:`bnnmip.milp.lp_bounds`) uses the
    stages below the one it bounds.
    """
    stages, names = net.threshold_stages, stage_names(net)
    has_ib = net.input_binarization is not None
    grid_pixels = box.on_grid and not has_ib
    pixel_cols = np.zeros(0, np.int64)
    # Pixel variables: only for a real first layer with free units, and only where the box is open.
    if not has_ib and n_stages > 0 and np.any(bounds[0].fixed == 0):
        first = net.layers[0]
        pixel_cols = np.flatnonzero(box.open & (first.weight[bounds[0].fixed == 0] != 0).any(axis=0))
        if grid_pixels:
            b.add_columns(box.k_lower[pixel_cols], box.k_upper[pixel_cols], True, -1, pixel_cols)
        else:
            b.add_columns(box.lower[pixel_cols], box.upper[pixel_cols], False, -1, pixel_cols)
    stage_cols = []
    for k in range(n_stages):
        units = np.flatnonzero(bounds[k].fixed == 0)
        cols = np.full(len(bounds[k].fixed), -1, np.int64)
        cols[units] = b.add_columns(np.zeros(len(units)), np.ones(len(units)), True, k, units)
        stage_cols.append(cols)
        if k == 0 and has_ib:
            continue  # input bits: free binaries, no rows (see the module docstring)
        if k == 0:
            rows = first_layer_rows(net, stages[0], bounds[0], units, box, base, pixel_cols, grid_pixels, margin)
        else:
            rows = binary_layer_rows(stages[k], bounds[k], units, bounds[k - 1], stage_cols[k - 1])
        b.add_unit_rows(names[k], units, rows, cols[units])
    return StageLayout(pixel_cols, grid_pixels, stage_cols, names)


def binary_layer_rows(layer: Layer, bnd: LayerBounds, units: np.ndarray, prev: LayerBounds,
                      prev_cols: np.ndarray) -> UnitRows:
    """Rows over the previous stage's free binaries: a = c + 2 s, exact integers."""
    free_in = np.flatnonzero(prev.fixed == 0)
    W = layer.weight[units].astype(np.float64)
    fixed_part = W @ prev.fixed.astype(np.float64)  # free inputs have fixed == 0
    Wf = W[:, free_in]
    c = fixed_part - Wf.sum(axis=1)
    theta2 = layer.threshold[units] - c
    if np.any(theta2 % 2):  # parity of the fan-in: a bug, never a data problem
        raise AssertionError("threshold parity broken in an integer layer")
    L = np.minimum(Wf, 0).sum(axis=1)
    U = np.maximum(Wf, 0).sum(axis=1)
    # Interval (or LP) bounds on a, in the same units, may be tighter than the free-input count.
    L = np.maximum(L, np.ceil((bnd.lower[units] - c) / 2 - TAU_TOL))
    U = np.minimum(U, np.floor((bnd.upper[units] - c) / 2 + TAU_TOL))
    return UnitRows(Wf, prev_cols[free_in], L, U, theta2 / 2, 1.0, 0.0)


def first_layer_rows(net: BNN, layer: Layer, bnd: LayerBounds, units: np.ndarray, box: InputBox, base: np.ndarray,
                     pixel_cols: np.ndarray, grid_pixels: bool, margin: float) -> UnitRows:
    """Rows of a real-valued first layer over the pixel variables (grid steps or values), columns 0..p-1.

    On the grid with ±1 weights the rows are over integer steps with integer thresholds (exact,
    ``delta = 1``).  On the grid with real weights the pixels are still integer steps, but the
    coefficients ``w * step`` and thresholds are real, so ``margin`` applies as for continuous inputs.
    """
    W = layer.weight[units].astype(np.float64)
    fixed = np.ones(W.shape[1], bool)
    fixed[pixel_cols] = False
    Wv = W[:, pixel_cols]
    if grid_pixels:
        C = W[:, fixed] @ base[fixed] + box.origin * Wv.sum(axis=1)
        v_lo, v_hi = box.k_lower[pixel_cols].astype(np.float64), box.k_upper[pixel_cols].astype(np.float64)
        if layer.binary_weights:
            tau = (layer.threshold[units] - C) / box.step
            finite = np.isfinite(tau)  # a constant unit keeps its infinite threshold
            theta = tau.copy()
            theta[finite] = np.ceil(tau[finite] - TAU_TOL * (1 + np.abs(tau[finite])))
            coef, delta, m = Wv, 1.0, 0.0
        else:
            theta = layer.threshold[units] - C
            coef, delta, m = Wv * box.step, margin, margin
    else:
        theta = layer.threshold[units] - W[:, fixed] @ base[fixed]
        v_lo, v_hi = box.lower[pixel_cols], box.upper[pixel_cols]
        coef, delta, m = Wv, margin, margin
    L = np.minimum(coef * v_lo, coef * v_hi).sum(axis=1)
    U = np.maximum(coef * v_lo, coef * v_hi).sum(axis=1)
    return UnitRows(coef, np.arange(len(pixel_cols)), L, U, theta, delta, m)
