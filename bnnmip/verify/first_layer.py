r"""The first layer of a real-input network, seen from the changes of the pixels: what flipping each
of its free units takes.

A change :math:`\Delta` of the pixels is in grid steps (±1 weights on the grid: every condition exact
in integers) or in values (otherwise: conditions relaxed to closed half-spaces, which keeps every
input that flips a unit — all pruning needs).  Unit :math:`j` can flip only if
``rows[j] · Δ >= need[j]``.  :meth:`FirstLayer.reach` decides whether a whole pattern of the free units
is reached by some input of the box: a small integer program (a linear one on continuous inputs, kept
a margin away from the thresholds) whose solution becomes an input and is re-checked like any candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .enumerate import reach_pattern
from .problem import Instance


@dataclass(frozen=True, eq=False)
class FirstLayer:
    """Stage ``stage`` of ``net.threshold_stages``: its free units, their clean pattern, and the flip rows."""

    stage: int
    free: np.ndarray
    clean: np.ndarray  # ±1 pattern of the whole stage at the base point (float64)
    rows: np.ndarray  # (free units, inputs): oriented so that a flip needs rows · Δ >= need
    need: np.ndarray
    lo: np.ndarray  # the input change box
    hi: np.ndarray
    binary: bool  # ±1 rows: pairwise conflicts are exact in closed form

    def reach(self, inst: Instance, pattern: np.ndarray, backend: str) -> str:
        """'adversarial', 'unreachable' or 'unknown' for a ±1 pattern of the free units."""
        return reach_pattern(inst, self.free, pattern, backend)


def first_free_layer(inst: Instance) -> FirstLayer:
    """The :class:`FirstLayer` of a real-input network (networks with input binarization branch on
    their bits instead: :mod:`.branch`; flips of their layer 1 over the bits measured far slower)."""
    return _pixel_layer(inst)


def _pixel_layer(inst: Instance) -> FirstLayer:
    layer, box = inst.net.layers[0], inst.box
    free = np.flatnonzero(inst.bounds[0].fixed == 0)
    base = box.snap(inst.x)
    pre = layer.pre_activation(base[None, :])[0]
    clean = np.where(pre >= layer.threshold, 1.0, -1.0)
    sigma = np.where(pre[free] >= layer.threshold[free], -1.0, 1.0)  # the direction that flips each unit
    weight = layer.weight[free].astype(np.float64)
    if box.on_grid and layer.binary_weights:
        k0 = box.to_steps(base)
        s0 = weight @ k0
        tau = (layer.threshold[free] - box.origin * weight.sum(axis=1)) / box.step
        tau = np.ceil(tau - 1e-9 * (1 + np.abs(tau)))
        need = np.where(sigma > 0, tau - s0, s0 - tau + 1)
        lo, hi = box.k_lower - k0, box.k_upper - k0
    else:
        need = sigma * (layer.threshold[free] - pre[free])
        lo, hi = box.lower - base, box.upper - base
    return FirstLayer(0, free, clean, sigma[:, None] * weight, need, lo.astype(np.float64), hi.astype(np.float64),
                      layer.binary_weights)
