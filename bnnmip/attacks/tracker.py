"""The anytime state every attack shares (:class:`Tracker`): best exact objective, its input, the
trace, and the first flip that the onnxruntime re-check confirms."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..box import InputBox
from ..errors import ExactnessError
from ..milp.formulation import check_target
from ..network import BNN
from ..progress import NO_PROGRESS, Progress
from ..status import Verdict
from .result import AttackResult, OnnxRecheck, recheck


def attack_targets(net: BNN, logits: np.ndarray, target: int | None) -> tuple[int, list[int]]:
    """(label, targets): every other class in order of the clean logit gap, or just ``target``."""
    label = int(np.argmax(logits))
    if target is not None:
        return label, [check_target(net, label, target)]
    order = np.argsort(logits[label] - logits, kind="stable")
    return label, [int(t) for t in order if t != label]


@dataclass
class Tracker:
    """The anytime state of one attack.

    ``objective(x') = max over targets of logit[t] - logit[label]`` by bnnmip's exact forward pass.
    :meth:`offer` judges candidates (a flip counts once onnxruntime's :class:`OnnxRecheck` confirms
    it, when the network came from ONNX) and reports each new best objective to ``progress``;
    :meth:`result` turns the state into an :class:`AttackResult`.
    """

    net: BNN
    x: np.ndarray
    eps: float
    box: InputBox
    target: int | None = None
    t0: float = field(default_factory=time.perf_counter)
    progress: Progress = NO_PROGRESS

    def __post_init__(self):
        logits = self.net.logits(self.x)[0]
        self.label, self.targets = attack_targets(self.net, logits, self.target)
        self.best = self.objective(logits)
        self.progress.update(incumbent=self.best, reset=True)
        self.x_best = self.x
        self.trace = [(0.0, self.best)]
        self.flip: tuple | None = None  # (x_adv, adv_label, recheck or None)
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
        prediction in bnnmip's exact forward pass and in onnxruntime's re-check.
        """
        f = self.objective(self.net.logits(x_adv)[0]) if objective is None else objective
        improved = f > self.best
        if improved:
            self.best, self.x_best = f, x_adv
            self.trace.append((self.elapsed(), f))
            self.progress.update(incumbent=f)
        # Only f >= 0 can change the prediction (f == 0: a tie the argmax may break our way).
        if f >= 0 and (improved or self.flip is None):
            self._judge(x_adv)
        return self.flip is not None

    def _judge(self, x_adv: np.ndarray) -> None:
        """Exact forward, then onnxruntime; a candidate outside the box is a bnnmip bug, never a result."""
        if not self.box.contains(x_adv):
            raise ExactnessError("an attack produced an input outside its perturbation box (a bnnmip bug)")
        adv_label = int(self.net.predict(x_adv)[0])
        if adv_label == self.label:
            return
        check = recheck(self.net, self.x, x_adv, self.eps, self.label)
        if check is None or check.ok:
            self.flip = (x_adv, adv_label, check)
        else:
            self.unverified += 1

    def offer_batch(self, X: np.ndarray) -> bool:
        """Judge a batch (exact logits in one pass; only the best candidate can improve)."""
        objectives = self.objective(self.net.logits(X))
        i = int(np.argmax(objectives))
        return self.offer(X[i], float(objectives[i]))

    def result(self, method: str, backend: str | None = None, *, robust: bool = False, bound: float | None = None,
               message: str = "", details: dict | None = None, proof: str = "") -> AttackResult:
        """The :class:`AttackResult`: adversarial if a flip counted, robust only if ``robust`` was proved
        (``proof`` says by what)."""
        x_adv, adv_label, check = self.flip if self.flip is not None else (None, None, None)
        if self.flip is not None:
            status = Verdict.ADVERSARIAL
        else:
            status = Verdict.ROBUST if robust else Verdict.UNKNOWN
        if self.unverified:
            note = f"{self.unverified} candidate(s) flipped in bnnmip but not in onnxruntime"
            message = f"{message}; {note}" if message else note
        return AttackResult(
            status=status, x_adv=x_adv, label=self.label, adv_label=adv_label, objective=self.best, bound=bound,
            time=self.elapsed(), method=method, backend=backend, trace=list(self.trace),
            verified=check is not None and check.ok, target=self.target, eps=self.eps, message=message,
            details=dict(details or {}), x_best=self.x_best, linf=_linf(x_adv, self.x), check=check,
            radius=self.box.radius, proof=proof if status == Verdict.ROBUST else "", x=self.x,
        )


def _linf(x_adv: np.ndarray | None, x: np.ndarray) -> float | None:
    return None if x_adv is None else float(np.abs(x_adv - x).max(initial=0.0))


__all__ = ["OnnxRecheck", "Tracker", "attack_targets"]
