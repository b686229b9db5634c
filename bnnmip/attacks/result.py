"""What every attack returns (:class:`AttackResult`) and the onnxruntime re-check behind ``verified``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..box import Radius
from ..io.runtime import onnx_logits
from ..network import BNN
from ..status import Verdict
from .save import jsonable, save_result

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

    def to_dict(self) -> dict:
        return {"confirmed": self.ok, "onnx_label": self.onnx_label, "clean_label": self.clean_label,
                "linf": self.linf, "eps": self.eps, "in_range": self.in_range}

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
    :class:`OnnxRecheck` — label, L∞ distance and input range — whose outcome is ``check`` and
    ``verified``), 'robust' (a complete proof that no input in the box changes the prediction;
    ``proof`` says which engine proved it and how) or 'unknown'.  ``objective`` is the best exact
    ``logit[t] - logit[label]`` found (the maximum over targets when untargeted; > 0 changes the
    prediction), ``bound`` an upper bound on it when a solver gave one (< 0 for every target is the
    MILP's proof), ``trace`` the anytime curve as (seconds, best objective).  ``eps`` is the radius
    asked; ``radius`` the one searched (on a grid: the whole steps within ``eps``).  ``x`` is the
    clean input, ``x_best`` the best input found, flip or not (a warm start for other attacks);
    ``linf`` the L∞ distance of ``x_adv`` from ``x``.
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
    radius: Radius | None = None
    proof: str = ""
    x: np.ndarray | None = None

    def verdict_line(self) -> tuple[str, str] | None:
        """What backs the status: ('proof', engine and bound) or ('onnxruntime', the re-check)."""
        if self.status == Verdict.ROBUST:
            bound = "" if self.bound is None else f" (largest {self.bound:.4g})"
            return "proof", (self.proof or "complete search") + bound
        if self.status == Verdict.ADVERSARIAL:
            if self.check is None:
                return "onnxruntime", "not run (the network has no ONNX origin); bnnmip's exact forward flips it"
            return "onnxruntime", self.check.describe()
        return None

    def summary(self) -> str:
        """The result as ``key  value`` lines (the command line prints them; the README explains each)."""
        radius = self.radius.describe() if self.radius is not None else f"{self.eps:g}"
        rows = [
            ("status", str(self.status)),
            ("method", self.method + (f" / {self.backend}" if self.backend else "")),
            ("eps", radius),
            ("label", str(self.label)),
            ("target", "any" if self.target is None else str(self.target)),
            ("adv_label", "-" if self.adv_label is None else str(self.adv_label)),
            ("objective", "-" if self.objective is None else f"{self.objective:.6g}"),
            ("bound", "-" if self.bound is None else f"{self.bound:.6g}"),
            ("time", f"{self.time:.2f} s"),
        ]
        if self.x_adv is not None and self.status == Verdict.ADVERSARIAL:
            rows.append(("max |dx|", "-" if self.linf is None else f"{self.linf:.6g}"))
        line = self.verdict_line()
        if line is not None:
            rows.append(line)
        if self.message:
            rows.append(("note", self.message))
        return "\n".join(f"{k:<10} {v}" for k, v in rows)

    def to_dict(self) -> dict:
        """The result as JSON-ready values (no input arrays: :meth:`save` writes those as .npy)."""
        out = {name: getattr(self, name) for name in ("status", "method", "backend", "label", "target", "adv_label",
                                                        "objective", "bound", "time", "eps", "linf", "verified",
                                                        "proof", "message")}
        out["radius"] = None if self.radius is None else self.radius.to_dict()
        out["onnxruntime"] = None if self.check is None else self.check.to_dict()
        out["trace"] = [list(point) for point in self.trace]
        out["details"] = self.details
        return jsonable(out)

    def save(self, directory: str | os.PathLike, shape: tuple[int, ...] | None = None,
             context: dict | None = None) -> list[Path]:
        """Write ``result.json``, ``x.npy``, and for a flip ``x_adv.npy`` and ``triptych.png`` (clean,
        adversarial, difference magnified) into ``directory``; returns the paths written.  ``shape``:
        the image shape for the picture (default: square when the input size is a square); ``context``:
        entries to put first in ``result.json`` (which model, data and image, say)."""
        return save_result(self, directory, shape=shape, context=context)
