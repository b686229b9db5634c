r"""The robustness question as one decision model: *is there an input in the box that some target beats?*

Columns and unit rows are those of the attack MILP (:mod:`bnnmip.milp.rows`); the output adds one
selector binary :math:`s_t` per target that interval bounds cannot rule out, with

.. math:: \sum_t s_t \ge 1, \qquad s_t = 1 \Rightarrow \tilde m_t(h) \ge 0,

where :math:`\tilde m_t` is an integer *relaxation* of the margin :math:`m_t(h) = g_t \cdot h + C_t`
(a real linear form): with :math:`S` a power-of-two scale and :math:`q_j = \mathrm{round}(S g_j)`,
:math:`S\,m_t(h) \le q \cdot h + \sum_j |S g_j - q_j| + S C_t`, so :math:`m_t \ge 0` implies
:math:`q \cdot h \ge \lfloor -S C_t - \sum_j |S g_j - q_j| \rfloor - 1`.  Every input that beats a target
satisfies the model; the model is infeasible only if none does (a proof).  A solution is a candidate,
re-checked exactly (the relaxation is looser than the margin by about :math:`\#\text{units}/S`).
The rows are integral wherever the unit rows are, so CP-SAT can take the model.
"""

from __future__ import annotations

import numpy as np

from ..bounds import LayerBounds
from ..box import InputBox
from ..network import BNN
from .builder import ModelBuilder
from .encoding import AttackEncoding
from .formulation import AttackModel
from .rows import add_stages

SCALE_BITS = 24  # |q_j| <= 2**24: integral, exact in float64, sums far below int64's range


def margin_rows(g: np.ndarray, constant: float, scale_bits: int = SCALE_BITS) -> tuple[np.ndarray, int]:
    """``(2q, rhs)`` with ``m(h) = g · h + constant >= 0  ⇒  2q · b >= rhs`` for ``h = 2b - 1`` (b in {0, 1})."""
    g = np.asarray(g, np.float64)
    top = float(np.abs(g).max(initial=0.0))
    scale = 2.0 ** (scale_bits - int(np.ceil(np.log2(top)))) if top > 0 else 1.0
    q = np.rint(scale * g)
    slack = float(np.abs(scale * g - q).sum())
    rhs = int(np.floor(q.sum() - scale * constant - slack)) - 1  # -1: room for float64 rounding above
    return 2 * q, rhs


def robustness_milp(net: BNN, x: np.ndarray, base: np.ndarray, eps: float, box: InputBox, label: int,
                    targets: list[int], bounds: list[LayerBounds], *, margin: float = 0.0,
                    levels: int | None = None, exclude: list[np.ndarray] = ()) -> AttackModel | None:
    """The decision model (see the module docstring) for ``targets``; None when interval bounds already
    rule out every target.  ``exclude`` lists last-layer patterns (±1 over its free units) to cut off,
    e.g. candidates the relaxation let through that do not beat any target exactly."""
    last = bounds[-1]
    free = np.flatnonzero(last.fixed == 0)
    A, c = net.out_weight, net.out_bias
    live = []
    for t in targets:
        g = A[t] - A[label]
        constant = float(c[t] - c[label] + g[last.fixed != 0] @ last.fixed[last.fixed != 0])
        if constant + np.abs(g[free]).sum() >= 0:
            live.append((t, g[free], constant))
    if not live:
        return None
    b = ModelBuilder()
    layout = add_stages(b, net, box, base, bounds, margin, len(bounds))
    unit_cols = layout.stage_cols[-1][free]
    selectors = b.add_columns(np.zeros(len(live)), np.ones(len(live)), True, len(bounds),
                              np.array([t for t, *_ in live]))
    for s, (t, g, constant) in zip(selectors, live):
        coef, rhs = margin_rows(g, constant)
        floor = float(np.minimum(coef, 0).sum())
        cols = np.concatenate([unit_cols, [s]])
        values = np.concatenate([coef, [floor - rhs]])  # s = 0: the row is implied by the bounds of b
        b.add_indicator_rows(np.zeros(len(cols), np.int64), cols, values, [floor], [np.inf], f"target_{t}", [s], 1)
    b.add_row(selectors, np.ones(len(selectors)), 1.0, np.inf, "some_target")
    for pattern in exclude:
        on = np.asarray(pattern) > 0  # at least one free last-layer unit differs from the pattern
        b.add_row(unit_cols, np.where(on, -1.0, 1.0), 1.0 - on.sum(), np.inf, "exclude")
    encoding = AttackEncoding(net, x, base, float(eps), label, -1, box, bounds, layout.pixel_cols, layout.grid_pixels,
                              layout.stage_cols, margin, levels)
    names = layout.stage_names + ("target",)
    return b.model(np.zeros(b.n_cols), 0.0, names, f"bnn_robustness_c{label}", model_type=AttackModel,
                   encoding=encoding)
