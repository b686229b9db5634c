r"""Exhaustive enumeration: every pattern of the free units of the first stage, evaluated exactly.

* **Input bits** (networks with input binarization): bit :math:`z_j` depends on pixel :math:`j`
  alone, so every pattern of the :math:`k` free bits is reachable from the box.  Evaluating all
  :math:`2^k` of them (first layer incrementally from the clean part, then the ±1 layers in exact
  float32 arithmetic) decides the instance: a pattern that changes the prediction becomes pixels and
  is re-checked; none means robust.
* **First-layer units** (real-valued first layer): the :math:`2^k` sign patterns of the free units
  of layer 1 over-approximate what the box can reach.  No pattern changing the prediction proves
  robustness; each pattern that does is checked for reachability with a small integer program over
  the pixels (closest patterns first), which either yields an input or rules the pattern out.
"""

from __future__ import annotations

import numpy as np

from ..milp.builder import ModelBuilder
from ..milp.encoding import pixels_with_bits
from ..milp.rows import first_layer_rows
from ..status import SolveStatus
from .problem import Instance, logits_after

CHUNK = 1 << 14  # patterns evaluated per batch


def patterns(k: int, start: int, stop: int) -> np.ndarray:
    """Patterns ``start .. stop-1`` of ``k`` ±1 units (bit ``j`` of the pattern number is unit ``j``)."""
    numbers = np.arange(start, stop, dtype=np.int64)
    bits = (numbers[:, None] >> np.arange(k, dtype=np.int64)[None, :]) & 1
    return (2 * bits - 1).astype(np.float32)


def bad_patterns(inst: Instance, stage: int, free: np.ndarray, fixed_post: np.ndarray):
    """Yield (pattern numbers, patterns) whose exact prediction changes, chunk by chunk.

    ``fixed_post`` is the stage's ±1 output with the free units' entries ignored; stops early
    (with a final ``None``) when the deadline passes.
    """
    total = 1 << len(free)
    base = np.asarray(fixed_post, np.float32)
    for start in range(0, total, CHUNK):
        if inst.deadline.expired():
            yield None
            return
        block = patterns(len(free), start, min(start + CHUNK, total))
        post = np.repeat(base[None, :], len(block), axis=0)
        post[:, free] = block
        inst.stats.patterns += len(block)
        bad = np.flatnonzero(inst.flips(logits_after(inst.net, stage, post)))
        if len(bad):
            yield start + bad, block[bad]


def enumerate_bits(inst: Instance) -> str:
    """Decide a network with input binarization by enumerating its free input bits.

    Returns 'adversarial', 'robust' or 'unknown' (the deadline passed first).
    """
    first = inst.bounds[0]
    free = np.flatnonzero(first.fixed == 0)
    base = inst.box.snap(inst.x)
    for found in bad_patterns(inst, 0, free, first.fixed):
        if found is None:
            return "unknown"
        _, bits = found
        for pattern in bits:
            x_adv = base.copy()
            x_adv[free] = pixels_with_bits(inst.net, inst.box, base, free, pattern > 0)
            # The pattern changes the prediction exactly: a flip, or (onnxruntime disagreeing) no proof.
            return "adversarial" if inst.offer(x_adv) else "unknown"
    return "robust"


def enumerate_first_layer(inst: Instance, max_checks: int, backend: str = "highs") -> str:
    """Decide a real-input network by enumerating the sign patterns of its free first-layer units.

    Returns 'adversarial', 'robust', 'unknown' (deadline) or 'too_many' (more than ``max_checks``
    patterns that change the prediction would need a reachability check).
    """
    first = inst.bounds[0]
    free = np.flatnonzero(first.fixed == 0)
    clean = np.where(inst.net.layers[0].pre_activation(inst.box.snap(inst.x)[None, :])[0]
                     >= inst.net.layers[0].threshold, 1.0, -1.0)
    suspects = []
    for found in bad_patterns(inst, 0, free, first.fixed):
        if found is None:
            return "unknown"
        suspects.append(found[1])
        if sum(len(s) for s in suspects) > max_checks:
            return "too_many"
    if not suspects:
        return "robust"
    candidates = np.concatenate(suspects)
    order = np.argsort((candidates != clean[free][None, :]).sum(axis=1), kind="stable")  # closest first
    for pattern in candidates[order]:
        if inst.deadline.expired():
            return "unknown"
        outcome = reach_pattern(inst, free, pattern, backend)
        if outcome == "adversarial":
            return outcome
        if outcome == "unknown":
            return "unknown"
    return "robust"


def reach_pattern(inst: Instance, free: np.ndarray, pattern: np.ndarray, backend: str) -> str:
    """Whether some input of the box gives the free first-layer units the signs ``pattern``.

    A small integer program over the pixels (grid steps, exact rows) or a linear one (continuous
    inputs, with a small margin so that a solution lands clearly on its side): 'adversarial' when a
    solution flips the prediction, 'unreachable' when it is infeasible, 'unknown' otherwise.
    """
    net, box = inst.net, inst.box
    inst.stats.checks += 1
    base = box.snap(inst.x)
    grid = box.on_grid
    pixels = np.flatnonzero(box.open)
    b = ModelBuilder()
    if grid:
        b.add_columns(box.k_lower[pixels], box.k_upper[pixels], True, -1, pixels)
    else:
        b.add_columns(box.lower[pixels], box.upper[pixels], False, -1, pixels)
    threshold = net.layers[0].threshold
    scale = 1.0 + float(np.abs(threshold[np.isfinite(threshold)]).max(initial=0.0))  # ±inf: constant units
    margin = 0.0 if grid and net.layers[0].binary_weights else 1e-6 * scale
    rows = first_layer_rows(net, net.layers[0], inst.bounds[0], free, box, base, pixels, grid, margin)
    on = pattern > 0
    coef = rows.coef
    lower = np.where(on, rows.theta + rows.margin, -np.inf)
    upper = np.where(on, np.inf, rows.theta - rows.delta)
    r, c = np.nonzero(coef)
    b.add_block(r, c, coef[r, c], lower, upper, "pattern")
    model = b.model(np.zeros(b.n_cols), 0.0, ("h1",), "reach")
    sol = model.solve(backend, time_limit=inst.deadline.seconds_left())
    inst.stats.solves += 1
    if sol.status == SolveStatus.INFEASIBLE:
        return "unreachable"
    if not sol.has_solution:
        return "unknown"
    x_adv = base.copy()
    v = sol.values[: len(pixels)]
    x_adv[pixels] = box.from_steps(np.rint(v)) if grid else v
    # The pattern is reached, so the prediction changes in exact arithmetic; a candidate onnxruntime
    # does not confirm (a float32 tie) proves nothing either way.
    return "adversarial" if inst.offer(x_adv) else "unknown"
