r"""One verification instance: the box, its interval bounds, the targets, and the exact judge of candidates.

Every route of the exact engine works on an :class:`Instance`.  A route *proves* robustness only by
a complete argument (interval bounds, exhaustive enumeration, a finished branch-and-bound, an
infeasible CP-SAT model, a MILP solved to optimality) and *reports* a flip only once the
:class:`~bnnmip.attacks.tracker.Tracker` has re-checked it (exact forward pass, then onnxruntime
on the original graph: label, L∞ distance and input range).

The output margin of target :math:`t` is :math:`m_t(h) = (A_t - A_c) \cdot h_D + (c_t - c_c)`;
the prediction can change only where :math:`\max_t m_t \ge 0`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..attacks.tracker import Tracker
from ..bounds import LayerBounds, interval_bounds_from_box
from ..box import InputBox, check_input, input_box
from ..network import BNN
from ..progress import NO_PROGRESS, Progress
from ..timing import Deadline


@dataclass
class Stats:
    """What the engine did: per phase (name, seconds, outcome), and counters."""

    phases: list = field(default_factory=list)
    patterns: int = 0  # input-bit or first-layer patterns evaluated exactly
    nodes: int = 0  # branch-and-bound nodes
    checks: int = 0  # reachability checks of first-layer patterns
    solves: int = 0  # CP-SAT / MILP solves

    def as_dict(self) -> dict:
        return {"phases": list(self.phases), "patterns": self.patterns, "nodes": self.nodes, "checks": self.checks,
                "solves": self.solves}


@dataclass
class Instance:
    """``net`` around ``x`` at radius ``eps`` (on ``levels`` steps), with its tracker and deadline."""

    net: BNN
    x: np.ndarray
    eps: float
    box: InputBox
    bounds: list[LayerBounds]
    tracker: Tracker
    deadline: Deadline
    levels: int | None
    stats: Stats = field(default_factory=Stats)
    _margins: tuple | None = field(default=None, repr=False)

    @classmethod
    def make(cls, net: BNN, x, eps, *, levels: int | None, target: int | None, deadline: Deadline,
             progress: Progress = NO_PROGRESS) -> Instance:
        xf = check_input(net, x)
        box = input_box(net, xf, eps, levels)
        tracker = Tracker(net, xf, float(eps), box, target, t0=deadline.t0, progress=progress)
        return cls(net, xf, float(eps), box, interval_bounds_from_box(net, box), tracker, deadline,
                   levels if levels is not None else net.levels)

    @property
    def label(self) -> int:
        return self.tracker.label

    @property
    def targets(self) -> list[int]:
        return self.tracker.targets

    @property
    def decided(self) -> bool:
        return self.tracker.flip is not None

    # ------------------------------------------------------------------ margins
    def margin_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(G, c): ``m_t(h) = G[t] @ h_D + c[t]`` for each target (rows in :attr:`targets` order)."""
        if self._margins is None:
            A, b = self.net.out_weight, self.net.out_bias
            t = np.asarray(self.targets)
            G = A[t] - A[self.label]
            self._margins = (G, b[t] - b[self.label], np.abs(G))
        return self._margins[:2]

    def margin_upper(self, last: LayerBounds) -> np.ndarray:
        """Upper bounds of every target's margin when the last stage's units are as ``last`` says."""
        return self.margin_upper_of(last.fixed)

    def margin_upper_of(self, fixed: np.ndarray) -> np.ndarray:
        """:meth:`margin_upper` from the last stage's fixed pattern alone (+1 / -1 / 0 free)."""
        G, c = self.margin_weights()
        f = fixed.astype(np.float64)
        return G @ f + self._margins[2] @ (f == 0) + c

    def flips(self, logits: np.ndarray) -> np.ndarray:
        """Rows of exact logits whose prediction changes in the attack's sense (towards the targets)."""
        pred = np.argmax(logits, axis=1)
        if self.tracker.target is None:
            return pred != self.label
        return pred == self.tracker.target

    def offer(self, x_adv: np.ndarray) -> bool:
        """Judge a candidate input (exact forward, onnxruntime); True once a flip counts."""
        return self.tracker.offer(self.box.snap(x_adv))


def logits_after(net: BNN, stage: int, post: np.ndarray) -> np.ndarray:
    """Exact logits (float64) of a batch whose ±1 outputs of ``net.threshold_stages[stage]`` are ``post``.

    The ±1 layers after it decide exactly in float32 (integer sums), the output layer is float64:
    the same arithmetic as :meth:`BNN.logits`.
    """
    inp = np.ascontiguousarray(post, dtype=np.float32)
    for layer in net.threshold_stages[stage + 1:]:
        inp = layer.signs(inp)
    return inp.astype(np.float64) @ net.out_weight.T + net.out_bias
