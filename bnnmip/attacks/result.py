"""What every attack returns (:class:`AttackResult`) and the onnxruntime re-check behind ``verified``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.runtime import onnx_logits
from ..network import BNN
from ..status import Verdict

_EPS_TOL = 1e-9  # relative to the input range: float noise in a distance that is exactly eps


@dataclass(frozen=True)
class OnnxRecheck:
    """An adversarial input re-checked on its own terms, independently of how the attack found it.

    onnxruntime runs the *original* ONNX graph on ``x_adv``; the distance to the clean input and the
    input range are measured afresh.  ``ok`` only when all three hold: the label changed in
    onnxruntime, ``linf <= eps`` and every value lies in the network's input range.
    """

    onnx_label: int
    clean_label: int
    linf: float
    eps: float
    in_range: bool

    @property
    def label_changed(self) -> bool:
        return self.onnx_label != self.clean_label

    @property
    def within_eps(self) -> bool:
        return self.linf <= self.eps

    @property
    def ok(self) -> bool:
        return self.label_changed and self.within_eps and self.in_range

    def describe(self) -> str:
        """One line: what onnxruntime said and what was measured."""
        if self.ok:
            return f"confirmed (label {self.clean_label} -> {self.onnx_label}, max |dx| {self.linf:.6g} <= eps)"
        problems = [text for bad, text in ((not self.label_changed, f"onnxruntime still predicts {self.onnx_label}"),
                                           (not self.within_eps, f"max |dx| {self.linf:.6g} > eps {self.eps:.6g}"),
                                           (not self.in_range, "values outside the input range")) if bad]
        return "NOT confirmed: " + "; ".join(problems)


def recheck(net: BNN, x: np.ndarray, x_adv: np.ndarray, eps: float, clean_label: int) -> OnnxRecheck | None:
    """:class:`OnnxRecheck` of ``x_adv`` against the clean input ``x`` (None: ``net`` has no ONNX origin)."""
    if net.origin is None:
        return None
    lo, hi = net.input_range
    x_adv = np.asarray(x_adv, np.float64).reshape(-1)
    if not np.isfinite(x_adv).all():  # not an input at all: nothing to ask onnxruntime
        return OnnxRecheck(int(clean_label), int(clean_label), float("inf"), float(eps), False)
    onnx_label = int(np.argmax(onnx_logits(net, x_adv)[0]))
    linf = float(np.abs(x_adv - np.asarray(x, np.float64).reshape(-1)).max(initial=0.0))
    tol = _EPS_TOL * (hi - lo)
    in_range = bool(np.all(x_adv >= lo) and np.all(x_adv <= hi))
    return OnnxRecheck(onnx_label, int(clean_label), linf, float(eps) + tol, in_range)


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one attack on one input.

    ``status`` is a :class:`~bnnmip.status.Verdict`: 'adversarial' (``x_adv`` changes the
    prediction: checked by bnnmip's exact forward pass and, when the network came from ONNX, by
    :class:`OnnxRecheck` — label, L∞ distance and input range — whose outcome is ``verified``),
    'robust' (a complete proof that no input in the box changes the prediction) or 'unknown'.
    ``objective`` is the best exact ``logit[t] - logit[label]`` found (the maximum over targets when
    untargeted), ``bound`` an upper bound on it when a solver gave one, ``trace`` the anytime curve
    as (seconds, best objective).  ``x_best`` is the best input found, flip or not (a warm start
    for other attacks); ``linf`` the L∞ distance of ``x_adv`` from the clean input.
    """

    status: Verdict
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
    x_best: np.ndarray | None = None
    linf: float | None = None
    check: OnnxRecheck | None = None

    def summary(self) -> str:
        rows = [
            ("status", str(self.status) + (" (verified by onnxruntime)" if self.verified else "")),
            ("method", self.method + (f" / {self.backend}" if self.backend else "")),
            ("eps", f"{self.eps:g}"),
            ("label", str(self.label)),
            ("target", "any" if self.target is None else str(self.target)),
            ("adv_label", "-" if self.adv_label is None else str(self.adv_label)),
            ("objective", "-" if self.objective is None else f"{self.objective:.6g}"),
            ("bound", "-" if self.bound is None else f"{self.bound:.6g}"),
            ("time", f"{self.time:.2f} s"),
        ]
        if self.x_adv is not None and self.status == Verdict.ADVERSARIAL:
            rows.append(("max |dx|", "-" if self.linf is None else f"{self.linf:.6g}"))
        if self.check is not None:
            rows.append(("onnxruntime", self.check.describe()))
        if self.message:
            rows.append(("note", self.message))
        return "\n".join(f"{k:<10} {v}" for k, v in rows)
