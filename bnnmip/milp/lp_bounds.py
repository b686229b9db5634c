r"""Tighter bounds by LP relaxation (MIPVerify style), layer by layer.

For every free unit :math:`j` of a ±1 layer :math:`k`, with the fixed inputs folded into
:math:`c_j` and :math:`h = 2b - 1` for the free ones,

.. math::  a_j = c_j + 2 \sum_{i\ \mathrm{free}} w_{ji} b_i, \qquad
           L_j = c_j + 2 \min_{P_k} s_j, \quad U_j = c_j + 2 \max_{P_k} s_j,

where :math:`s_j = \sum_{i\ \mathrm{free}} w_{ji} b_i` and :math:`P_k` is the LP relaxation of the attack
MILP's rows of the stages below :math:`k` (binaries relaxed to [0, 1], grid steps to reals), built with the
bounds already tightened.  Every input of the box is a point of :math:`P_k`, so the bounds are sound.
:math:`a_j` has the parity of the fan-in, so the LP values are rounded inwards to integers
:math:`s` (after a tolerance for the LP's own rounding).  Units whose new bounds decide their sign
become fixed; the next layer's interval bounds are recomputed from the new fixed pattern, then
tightened in turn.

One HiGHS LP per layer; only the objective changes between solves (in place, one vector call per
unit and direction), so each solve is a warm-started primal simplex from the previous basis.  The
first real-valued layer (or the first layer after input binarization) has no rows below it: its
interval bounds are already exact over the box and are kept.
"""

from __future__ import annotations

import time
from dataclasses import replace

import highspy
import numpy as np

from ..bounds import InputBox, LayerBounds, stage_bounds
from ..network import BNN

# Allowance for the LP's rounding before an LP value is rounded inwards to an integer.
_LP_TOL = 1e-6


def tighten_bounds(net: BNN, box: InputBox, bounds: list[LayerBounds], *, deadline: float | None = None
                   ) -> list[LayerBounds]:
    """``bounds`` (interval bounds over ``box``) tightened by LP relaxation, stage by stage.

    Returns one :class:`~bnnmip.bounds.LayerBounds` per threshold stage; every interval of the
    result lies inside the interval it came from, and more units may be fixed.  Past
    ``deadline`` (a ``time.perf_counter()`` value) no more LPs are solved: the remaining units
    keep the bounds they have, which are sound.
    """
    from .formulation import ModelBuilder, add_stages

    out = list(bounds)
    stages = net.threshold_stages
    base = box.lower  # the value of every pixel without a variable (closed box: lower == upper)
    for k in range(1, len(stages)):
        layer = stages[k]
        L, U = stage_bounds(layer, out[k - 1], box)
        L, U = np.maximum(L, out[k].lower), np.minimum(U, out[k].upper)
        units = np.flatnonzero(_fix(L, U, layer.threshold) == 0)
        b = ModelBuilder()
        layout = add_stages(b, net, box, base, out, 0.0, k)
        if len(units) and b.n_rows:
            L[units], U[units] = _lp_range(b, layer, out[k - 1], layout.stage_cols[k - 1], units, L[units],
                                           U[units], deadline)
        out[k] = LayerBounds(L, U, _fix(L, U, layer.threshold))
    return out


def _fix(lower: np.ndarray, upper: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    return np.where(lower >= threshold, 1, np.where(upper < threshold, -1, 0)).astype(np.int8)


def _lp_range(b, layer, prev: LayerBounds, prev_cols: np.ndarray, units: np.ndarray, L: np.ndarray,
              U: np.ndarray, deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``a_j`` over the LP relaxation for the ``units`` of one ±1 layer."""
    from ..backends.highs import build

    free_in = np.flatnonzero(prev.fixed == 0)
    W = layer.weight[units].astype(np.float64)
    c = W @ prev.fixed.astype(np.float64) - W[:, free_in].sum(axis=1)
    Wf = W[:, free_in]
    in_cols = prev_cols[free_in].astype(np.int32)
    model = b.model(np.zeros(b.n_cols), 0.0, (), "lp_bounds")
    h = build(replace(model, integrality=np.zeros(model.num_cols, bool)))
    h.setOptionValue("presolve", "off")  # keep the basis between objective changes
    h.setOptionValue("solver", "simplex")
    h.setOptionValue("simplex_strategy", 1)  # dual simplex (measured: 2-4x faster than primal here)
    h.setOptionValue("simplex_scale_strategy", 0)  # no scaling: ±1 rows; measured 2x faster
    h.changeObjectiveSense(highspy.ObjSense.kMinimize)
    L, U = L.copy(), U.copy()
    n = len(in_cols)
    for j in range(len(units)):
        for direction in (1.0, -1.0):
            if deadline is not None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return L, U
                h.setOptionValue("time_limit", h.getRunTime() + left)  # HiGHS's LP clock adds up over runs
            h.changeColsCost(n, in_cols, direction * Wf[j])
            h.run()
            if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                continue  # keep the interval bound: an LP that did not solve proves nothing
            value = direction * h.getInfo().objective_function_value
            tol = _LP_TOL * (1.0 + abs(value))
            if direction > 0:
                L[j] = max(L[j], c[j] + 2 * np.ceil(value - tol))
            else:
                U[j] = min(U[j], c[j] + 2 * np.floor(value + tol))
    return L, U
