"""AttackResult: what every attack returns, and the onnxruntime re-check behind ``verified``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bounds import InputBox
from ..errors import ExactnessError
from ..network import BNN

STATUSES = ("adversarial", "robust", "unknown")
_BOX_TOL = 1e-9


@dataclass
class AttackResult:
    """The outcome of one attack on one input.

    ``status`` is 'adversarial' (``x_adv`` changes the prediction: checked by bnnmip's exact
    forward pass and, when the network came from ONNX, by onnxruntime on the original graph:
    ``verified``), 'robust' (a MILP solved to optimality proved that no input in the box changes
    the prediction) or 'unknown'.  ``objective`` is the best exact ``logit[t] - logit[label]``
    found (the maximum over targets when untargeted), ``bound`` an upper bound on it when a solver
    gave one, ``trace`` the anytime curve as (seconds, best objective).
    """

    status: str
    x_adv: np.ndarray | None
    label: int
    adv_label: int | None
    objective: float | None
    bound: float | None
    time: float
    method: str
    backend: str | None
    trace: list = field(default_factory=list)
    verified: bool = False
    target: int | None = None
    eps: float = 0.0
    message: str = ""
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        rows = [
            ("status", self.status + (" (verified by onnxruntime)" if self.verified else "")),
            ("method", self.method + (f" / {self.backend}" if self.backend else "")),
            ("eps", f"{self.eps:g}"),
            ("label", str(self.label)),
            ("target", "any" if self.target is None else str(self.target)),
            ("adv_label", "-" if self.adv_label is None else str(self.adv_label)),
            ("objective", "-" if self.objective is None else f"{self.objective:.6g}"),
            ("bound", "-" if self.bound is None else f"{self.bound:.6g}"),
            ("time", f"{self.time:.2f} s"),
        ]
        if self.x_adv is not None and self.status == "adversarial":
            rows.append(("max |dx|", f"{self.details.get('linf', float('nan')):.6g}"))
        if self.message:
            rows.append(("note", self.message))
        return "\n".join(f"{k:<10} {v}" for k, v in rows)


def in_box(x_adv: np.ndarray, box: InputBox, lo_range: float) -> bool:
    """Whether ``x_adv`` lies in the box (and on its grid, when it has one)."""
    if np.any(x_adv < box.lower - _BOX_TOL) or np.any(x_adv > box.upper + _BOX_TOL):
        return False
    if box.step is not None:
        k = (x_adv - lo_range) / box.step
        return bool(np.all(np.abs(k - np.rint(k)) <= 1e-6))
    return True


def judge(net: BNN, x_adv: np.ndarray, label: int, box: InputBox) -> tuple[bool, int, bool]:
    """(flips, adv_label, verified) for a candidate: exact forward, then onnxruntime.

    A candidate outside the box is a bug in bnnmip, never a result: it raises ExactnessError.
    """
    from ..io.runtime import onnx_logits

    if not in_box(x_adv, box, net.input_range[0]):
        raise ExactnessError("an attack produced an input outside its perturbation box (a bnnmip bug)")
    adv_label = int(net.predict(x_adv)[0])
    flips = adv_label != label
    if not flips or net.origin is None:
        return flips, adv_label, False
    onnx_label = int(np.argmax(onnx_logits(net, x_adv)[0]))
    return flips, adv_label, onnx_label != label
