r"""Branch-and-bound over input bits (networks with input binarization).

A node fixes some free input bits; interval bounds below it (:func:`~bnnmip.bounds.propagate_bounds`)
fix every unit whose interval no longer crosses its threshold, and bound every target's margin from
above.  A node whose bounds are all below zero holds no flip and is closed; a node with few bits
left is enumerated exactly (:mod:`bnnmip.verify.enumerate`); otherwise it splits on the bit that
tightens most.  Depth first, the child with the larger bound first (it is where a flip would be).
Finishing the tree is a proof; every flip found is re-checked like any other.
"""

from __future__ import annotations

import numpy as np

from ..bounds import LayerBounds, propagate_bounds
from ..milp.encoding import pixels_with_bits
from ..timing import Deadline
from .enumerate import bad_patterns
from .problem import Instance

LEAF_BITS = 12  # enumerate a node once this few bits are left (4,096 patterns: one batch)


def branch_bits(inst: Instance, leaf_bits: int = LEAF_BITS, deadline: Deadline | None = None) -> str:
    """Decide a network with input binarization by branch-and-bound over its free bits.

    Returns 'adversarial', 'robust' or 'unknown' (``deadline``, default the instance's, passed first).
    """
    deadline = deadline or inst.deadline
    first = inst.bounds[0]
    stack = [first.fixed.copy()]
    while stack:
        if deadline.expired():
            return "unknown"
        fixed = stack.pop()
        inst.stats.nodes += 1
        upper = _upper(inst, first, fixed)
        if upper.max() < 0:
            continue
        unassigned = np.flatnonzero(fixed == 0)
        if len(unassigned) <= leaf_bits:
            outcome = _enumerate_leaf(inst, fixed, unassigned)
            if outcome != "robust":
                return outcome
            continue
        stack += _children(inst, first, fixed, unassigned)
    return "robust"


def _upper(inst: Instance, first: LayerBounds, fixed: np.ndarray) -> np.ndarray:
    below = propagate_bounds(inst.net, 0, LayerBounds(first.lower, first.upper, fixed))
    return inst.margin_upper(below[-1])


def _children(inst: Instance, first: LayerBounds, fixed: np.ndarray, unassigned: np.ndarray) -> list[np.ndarray]:
    """The two children of the bit that tightens the bounds most, the more promising one last (popped first)."""
    layer = inst.net.layers[0]
    below = propagate_bounds(inst.net, 0, LayerBounds(first.lower, first.upper, fixed))[0]
    free_units = np.flatnonzero(below.fixed == 0)
    # A bit matters most for the free units closest to being decided: weight 1 / (1 + their slack).
    slack = np.minimum(below.upper - layer.threshold, layer.threshold - below.lower)[free_units]
    influence = np.abs(layer.weight[free_units][:, unassigned].astype(np.float64)).T @ (1.0 / (1.0 + np.maximum(slack,
                                                                                                              0)))
    bit = int(unassigned[int(np.argmax(influence))])
    children = []
    for value in (1, -1):
        child = fixed.copy()
        child[bit] = value
        children.append((float(_upper(inst, first, child).max()), child))
    children.sort(key=lambda c: c[0])
    return [child for _, child in children]


def _enumerate_leaf(inst: Instance, fixed: np.ndarray, unassigned: np.ndarray) -> str:
    base = inst.box.snap(inst.x)
    all_free = np.flatnonzero(inst.bounds[0].fixed == 0)
    for found in bad_patterns(inst, 0, unassigned, fixed):
        if found is None:
            return "unknown"
        for pattern in found[1]:
            bits = fixed[all_free].astype(np.float64)
            bits[np.searchsorted(all_free, unassigned)] = pattern
            x_adv = base.copy()
            x_adv[all_free] = pixels_with_bits(inst.net, inst.box, base, all_free, bits > 0)
            # The pattern changes the prediction exactly: a flip, or (onnxruntime disagreeing) no proof.
            return "adversarial" if inst.offer(x_adv) else "unknown"
    return "robust"
