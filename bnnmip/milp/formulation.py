r"""The attack MILP of Khalil, Gupta & Dilkina (ICLR 2019), with fixed units eliminated.

For a target class :math:`t` and the clean prediction :math:`c`, with :math:`h = 2b - 1` for the
binaries of free units:

.. math::
    \max\ (A_t - A_c) \cdot h_D + (c_t - c_c) \quad \text{s.t. for every free unit } j
    \text{ of every layer, with } s_j \text{ its pre-activation over the free inputs:} \\
    s_j + (L'_j - \theta'_j - m)\, b_j \ge L'_j \qquad (b_j = 1 \Rightarrow s_j \ge \theta'_j + m) \\
    s_j - (U'_j - \theta'_j + \delta)\, b_j \le \theta'_j - \delta
    \qquad (b_j = 0 \Rightarrow s_j \le \theta'_j - \delta)

The rows are those of :mod:`bnnmip.milp.rows`.  ``margin = 0`` makes the rows of a real-valued
first layer a relaxation (sound for certificates); ``margin > 0`` a restriction whose solutions
sit clearly on their side of every threshold (for attacks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import LayerBounds, interval_bounds_from_box
from ..box import InputBox, check_input, input_box
from ..errors import InvalidArgumentError
from ..network import BNN
from ..timing import Deadline
from ..validate import check_choice, check_class
from .builder import ModelBuilder
from .encoding import AttackEncoding
from .lp_bounds import tighten_bounds
from .model import MilpModel
from .rows import add_stages

BOUNDS = ("interval", "lp")


@dataclass(frozen=True, eq=False, repr=False)
class AttackModel(MilpModel):
    """An attack MILP together with its :class:`AttackEncoding` (``encoding``), which maps column
    values back to inputs; ``info['encoding']`` is the same object (kept for one release)."""

    encoding: AttackEncoding | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.encoding is not None:
            self.info.setdefault("encoding", self.encoding)


def check_bounds_mode(bounds) -> str:
    return check_choice(bounds, BOUNDS, "bounds")


def check_target(net: BNN, label: int, target) -> int:
    """A target class other than the clean prediction ``label``."""
    target = check_class(target, net.n_classes, "target")
    if target == label:
        raise InvalidArgumentError(f"target={target}: equals the clean prediction; choose another class")
    return target


def attack_milp(
    net: BNN,
    x,
    eps,
    target: int,
    *,
    levels: int | None = None,
    bounds: str = "interval",
    margin: float = 0.0,
    label: int | None = None,
    layer_bounds: list[LayerBounds] | None = None,
) -> AttackModel:
    """The attack MILP for ``target`` around ``x`` at L∞ radius ``eps`` (DESIGN.md §5).

    Parameters
    ----------
    levels
        Perturb on the grid ``lo + k (hi - lo) / levels`` (default: the network's own grid, if any).
    bounds
        'interval' (DESIGN.md §4) or 'lp' (tightened per unit by LP relaxation, as MIPVerify does).
    margin
        Gap kept from thresholds of real-valued (continuous) units; 0 makes the MILP a relaxation
        of the exact problem (sound for certificates).
    label
        The clean prediction (computed when not given).
    layer_bounds
        Bounds already computed for this box by :func:`attack_bounds` (they do not depend on the
        target, so an untargeted attack computes them once); ``bounds`` is then ignored.

    Returns an :class:`AttackModel`: a :class:`MilpModel` whose ``encoding`` maps solutions back to inputs.
    """
    check_bounds_mode(bounds)
    margin = float(margin)
    if not np.isfinite(margin) or margin < 0:
        raise InvalidArgumentError(f"margin={margin!r}: expected a finite number >= 0")
    xf = check_input(net, x)
    label = int(net.predict(xf)[0]) if label is None else int(label)
    target = check_target(net, label, target)
    box = input_box(net, xf, eps, levels=levels)
    if layer_bounds is None:
        layer_bounds = attack_bounds(net, box, bounds)
    elif len(layer_bounds) != len(net.threshold_stages):
        raise InvalidArgumentError(f"layer_bounds: expected {len(net.threshold_stages)} stages, "
                                   f"got {len(layer_bounds)}")
    b = ModelBuilder()
    base = box.snap(xf)
    layout = add_stages(b, net, box, base, layer_bounds, margin, len(layer_bounds))
    objective, offset = _objective(net, label, target, layer_bounds[-1], layout.stage_cols[-1], b.n_cols)
    encoding = AttackEncoding(net, xf, base, float(eps), label, target, box, layer_bounds, layout.pixel_cols,
                              layout.grid_pixels, layout.stage_cols, margin, levels)
    return b.model(objective, offset, layout.stage_names, f"bnn_attack_t{target}_c{label}", model_type=AttackModel,
                   encoding=encoding)


def attack_bounds(net: BNN, box: InputBox, bounds: str = "interval", *, deadline: Deadline | None = None
                  ) -> list[LayerBounds]:
    """Bounds of every threshold stage over ``box``: interval, or tightened by LP ('lp').

    Past ``deadline`` LP tightening stops; the units not reached keep their interval bounds (still sound).
    """
    check_bounds_mode(bounds)
    layer_bounds = interval_bounds_from_box(net, box)
    if bounds == "lp":
        layer_bounds = tighten_bounds(net, box, layer_bounds, deadline=deadline)
    return layer_bounds


def _objective(net: BNN, label: int, target: int, last: LayerBounds, last_cols, n_cols):
    g = net.out_weight[target] - net.out_weight[label]
    free = last.fixed == 0
    offset = net.out_bias[target] - net.out_bias[label] + g[~free] @ last.fixed[~free] - g[free].sum()
    objective = np.zeros(n_cols)
    objective[last_cols[free]] = 2 * g[free]
    return objective, offset
