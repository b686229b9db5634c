"""AttackResult: what every attack returns, and the onnxruntime re-check behind ``verified``."""

from __future__ import annotations

import time
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


def attack_targets(net: BNN, logits: np.ndarray, target: int | None) -> tuple[int, list[int]]:
    """(label, targets): every other class in order of the clean logit gap, or just ``target``."""
    from ..milp.formulation import check_target

    label = int(np.argmax(logits))
    if target is not None:
        return label, [check_target(net, label, target)]
    order = np.argsort(logits[label] - logits, kind="stable")
    return label, [int(t) for t in order if t != label]


@dataclass
class Tracker:
    """The anytime state every attack shares: best exact objective, its input, the trace, the flip.

    ``objective(x') = max over targets of logit[t] - logit[label]`` by bnnmip's exact forward pass.
    :meth:`offer` judges candidates (a flip counts once onnxruntime agrees, when the network came
    from ONNX); :meth:`result` turns the state into an :class:`AttackResult`.
    """

    net: BNN
    x: np.ndarray
    eps: float
    box: InputBox
    target: int | None = None
    t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        logits = self.net.logits(self.x)[0]
        self.label, self.targets = attack_targets(self.net, logits, self.target)
        self.best = self.objective(logits)
        self.x_best = self.x
        self.trace = [(0.0, self.best)]
        self.flip: tuple | None = None  # (x_adv, adv_label, verified)
        self.unverified = 0

    def objective(self, logits: np.ndarray):
        """``max over targets of logit[t] - logit[label]`` (a float, or one per row of a batch)."""
        value = np.max(logits[..., self.targets], axis=-1) - logits[..., self.label]
        return float(value) if np.ndim(value) == 0 else value

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def offer(self, x_adv: np.ndarray, objective: float | None = None) -> bool:
        """Judge one candidate input; True once some flip counts (the attack may stop).

        ``x_adv`` becomes the reported flip when it improves the best objective and flips the
        prediction in bnnmip's exact forward pass and in onnxruntime.
        """
        f = self.objective(self.net.logits(x_adv)[0]) if objective is None else objective
        improved = f > self.best
        if improved:
            self.best, self.x_best = f, x_adv
            self.trace.append((self.elapsed(), f))
        # Only f >= 0 can change the prediction (f == 0: a tie the argmax may break our way).
        if f >= 0 and (improved or self.flip is None):
            flips, adv_label, verified = judge(self.net, x_adv, self.label, self.box)
            if flips and (verified or self.net.origin is None):
                self.flip = (x_adv, adv_label, verified)
            else:
                self.unverified += flips
        return self.flip is not None

    def offer_batch(self, X: np.ndarray) -> bool:
        """Judge a batch (exact logits in one pass; only the best candidate can improve)."""
        objectives = self.objective(self.net.logits(X))
        i = int(np.argmax(objectives))
        return self.offer(X[i], float(objectives[i]))

    def result(self, method: str, backend: str | None = None, *, robust: bool = False, bound: float | None = None,
               message: str = "", details: dict | None = None) -> AttackResult:
        """The :class:`AttackResult`: adversarial if a flip counted, robust only if ``robust`` was proved."""
        details = dict(details or {})
        details["x_best"] = self.x_best  # the best input found, flip or not (a warm start for others)
        if self.flip is not None:
            x_adv, adv_label, verified = self.flip
            status = "adversarial"
            details["linf"] = float(np.abs(x_adv - self.x).max())
        else:
            x_adv, adv_label, verified = None, None, False
            status = "robust" if robust else "unknown"
        if self.unverified:
            note = f"{self.unverified} candidate(s) flipped in bnnmip but not in onnxruntime"
            message = f"{message}; {note}" if message else note
        return AttackResult(
            status=status, x_adv=x_adv, label=self.label, adv_label=adv_label, objective=self.best, bound=bound,
            time=self.elapsed(), method=method, backend=backend,
            trace=list(self.trace), verified=verified, target=self.target, eps=self.eps, message=message,
            details=details,
        )
