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

One LP per layer, solved through a backend session (HiGHS by default; any backend with the
``in_place_session`` and ``lp`` capabilities): only the objective changes between solves, so each
solve is a warm-started dual simplex from the previous basis.  The
first real-valued layer (or the first layer after input binarization) has no rows below it: its
interval bounds are already exact over the box and are kept.
"""

from __future__ import annotations

import numpy as np

from ..bounds import LayerBounds, fix_units, stage_bounds
from ..box import InputBox
from ..errors import InvalidArgumentError
from ..network import BNN
from ..timing import Deadline
from .backend import get_backend
from .builder import ModelBuilder
from .rows import add_stages

# Allowance for the LP's rounding before an LP value is rounded inwards to an integer.
_LP_TOL = 1e-6


def tighten_bounds(net: BNN, box: InputBox, bounds: list[LayerBounds], *, deadline: Deadline | None = None,
                   backend: str = "highs") -> list[LayerBounds]:
    """``bounds`` (interval bounds over ``box``) tightened by LP relaxation, stage by stage.

    Returns one :class:`~bnnmip.bounds.LayerBounds` per threshold stage; every interval of the
    result lies inside the interval it came from, and more units may be fixed.  Past ``deadline``
    no more LPs are solved: the remaining units keep the bounds they have, which are sound.
    """
    solver = get_backend(backend)
    if not (solver.capabilities.lp and solver.capabilities.in_place_session):
        raise InvalidArgumentError(f"backend={backend!r}: LP bounds need a backend that re-solves LPs in place")
    deadline = deadline or Deadline.start(None)
    out = list(bounds)
    stages = net.threshold_stages
    base = box.lower  # the value of every pixel without a variable (closed box: lower == upper)
    for k in range(1, len(stages)):
        layer = stages[k]
        L, U = stage_bounds(layer, out[k - 1], box)
        L, U = np.maximum(L, out[k].lower), np.minimum(U, out[k].upper)
        units = np.flatnonzero(fix_units(L, U, layer.threshold) == 0)
        b = ModelBuilder()
        layout = add_stages(b, net, box, base, out, 0.0, k)
        if len(units) and b.n_rows and not deadline.expired():
            lp = b.model(np.zeros(b.n_cols), 0.0, (), "lp_bounds", sense="min")
            lp = lp.relaxed()
            session = solver.open_session(lp)
            L[units], U[units] = _lp_range(session, layer, out[k - 1], layout.stage_cols[k - 1], units, L[units],
                                           U[units], deadline)
        out[k] = LayerBounds(L, U, fix_units(L, U, layer.threshold))
    return out


def _lp_range(session, layer, prev: LayerBounds, prev_cols: np.ndarray, units: np.ndarray, L: np.ndarray,
              U: np.ndarray, deadline: Deadline) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``a_j`` over the LP relaxation for the ``units`` of one ±1 layer."""
    free_in = np.flatnonzero(prev.fixed == 0)
    W = layer.weight[units].astype(np.float64)
    c = W @ prev.fixed.astype(np.float64) - W[:, free_in].sum(axis=1)
    Wf = W[:, free_in]
    in_cols = prev_cols[free_in]
    L, U = L.copy(), U.copy()
    for j in range(len(units)):
        for direction in (1.0, -1.0):
            if deadline.expired():
                return L, U
            session.set_objective(in_cols, direction * Wf[j])
            sol = session.solve(time_limit=deadline.seconds_left())
            if not sol.proved_optimal:
                continue  # keep the interval bound: an LP that did not solve proves nothing
            value = direction * sol.objective
            tol = _LP_TOL * (1.0 + abs(value))
            if direction > 0:
                L[j] = max(L[j], c[j] + 2 * np.ceil(value - tol))
            else:
                U[j] = min(U[j], c[j] + 2 * np.floor(value + tol))
    return L, U
