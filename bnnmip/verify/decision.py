"""The decision-model route: :func:`~bnnmip.milp.robustness.robustness_milp` on a backend (CP-SAT by default).

An infeasible model is a proof.  A solution is decoded to an input and re-checked; a candidate that
the integer relaxation of the margins let through (it realises its last-layer pattern exactly but
beats no target) is cut off and the model solved again.
"""

from __future__ import annotations

import numpy as np

from ..milp.backend import get_backend
from ..milp.robustness import robustness_milp
from ..status import SolveStatus
from .problem import Instance


def decide_with_model(inst: Instance, backend: str = "cpsat", threads: int | None = None) -> str:
    """'robust', 'adversarial' or 'unknown' from the decision model solved by ``backend``."""
    caps = get_backend(backend).capabilities
    exclude: list[np.ndarray] = []
    base = inst.box.snap(inst.x)
    while not inst.deadline.expired(0.05):
        model = robustness_milp(inst.net, inst.x, base, inst.eps, inst.box, inst.label, inst.targets, inst.bounds,
                                levels=inst.levels, exclude=exclude)
        if model is None:
            return "robust"
        start = _hint(inst, model) if caps.warm_start else None
        sol = model.solve(backend, time_limit=inst.deadline.seconds_left(), threads=threads, start=start)
        inst.stats.solves += 1
        if sol.status == SolveStatus.INFEASIBLE:
            return "robust"
        if not sol.has_solution:
            return "unknown"
        x_adv = model.encoding.decode(sol.values)
        if inst.offer(x_adv):
            return "adversarial"
        pattern = _spurious_pattern(inst, model, sol.values, x_adv)
        if pattern is None:
            return "unknown"
        exclude.append(pattern)
    return "unknown"


def _last_free(inst: Instance) -> np.ndarray:
    return np.flatnonzero(inst.bounds[-1].fixed == 0)


def _spurious_pattern(inst: Instance, model, values: np.ndarray, x_adv: np.ndarray) -> np.ndarray | None:
    """The solution's last-layer pattern, if ``x_adv`` realises it exactly and keeps the prediction
    (so no input with that pattern flips: safe to cut off); None otherwise."""
    free = _last_free(inst)
    claimed = np.where(values[model.encoding.stage_cols[-1][free]] > 0.5, 1, -1)
    acts = inst.net.forward(x_adv)
    realised = acts.post[-1][0][free]
    if not np.array_equal(claimed, realised) or inst.flips(acts.logits)[0]:
        return None
    return claimed


def _hint(inst: Instance, model) -> np.ndarray:
    """A full start vector from the best input so far: its activations, and the closest target selected."""
    values = np.zeros(model.num_cols)
    head = model.encoding.encode(inst.tracker.x_best)
    values[: len(head)] = head
    selectors = np.flatnonzero(model.columns.stage == len(inst.bounds))
    logits = inst.net.logits(inst.tracker.x_best)[0]
    chosen = model.columns.index[selectors]
    values[selectors[int(np.argmax(logits[chosen]))]] = 1.0
    return values
