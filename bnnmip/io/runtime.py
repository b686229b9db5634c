"""onnxruntime on the original graph: the judge of every adversarial example bnnmip reports.

Sessions are built from the model bytes validated at load time (never from a path that could
have changed, and never letting onnxruntime resolve external data itself), with the logits
tensor (before any Softmax) added as an output.  Graph optimizations are off: onnxruntime's
fusions (batch norm folded into the MatMul, say) change float32 rounding, so a unit sitting on
its threshold could flip; the judge runs the graph node by node, as written.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import ExactnessError, InvalidArgumentError
from ..network import BNN

_SESSIONS: OrderedDict[str, object] = OrderedDict()
_MAX_SESSIONS = 32
_FATAL = 4  # onnxruntime's log severities: 0 verbose .. 3 error, 4 fatal
_INHERITED: list[OrderedDict] = []  # a forked child's copies of its parent's sessions: kept, never used


def _forget_sessions_after_fork() -> None:
    """A forked child starts a cache of its own.

    onnxruntime sessions are not fork-safe: destroying (or running) a session copied from the parent
    waits on thread-pool threads the child does not have, and hangs.  Evicting one from the cache
    did exactly that once the parent held a full cache, so the child keeps the copies alive, unused.
    """
    global _SESSIONS
    _INHERITED.append(_SESSIONS)
    _SESSIONS = OrderedDict()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sessions_after_fork)


def ort_session(model_bytes: bytes, threads: int | None = None):
    """A cached onnxruntime CPU session for a serialized model."""
    key = hashlib.sha1(model_bytes).hexdigest() + f"/{threads}"
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    session = new_session(model_bytes, threads)
    _SESSIONS[key] = session
    if len(_SESSIONS) > _MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session


def new_session(model_bytes: bytes, threads: int | None = None):
    """A new (uncached) onnxruntime CPU session, graph optimizations off, its log kept off stderr.

    onnxruntime logs a failing node on stderr (in colour) as well as raising; bnnmip reports the
    exception as one line, so only fatal log messages are let through.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(_FATAL)
    options = ort.SessionOptions()
    options.log_severity_level = _FATAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _origin(net: BNN):
    if net.origin is None:
        raise InvalidArgumentError("net: this BNN was not loaded from ONNX, so there is no original graph to run")
    return net.origin


def onnx_logits(net: BNN, X, *, threads: int | None = None, batch: int = 4096) -> np.ndarray:
    """Logits of the *original* ONNX graph in onnxruntime (before any Softmax), float64 (n, k)."""
    origin = _origin(net)
    X = net.as_batch(X)
    session = ort_session(origin.logits_model, threads)
    out = []
    for start in range(0, len(X), batch):
        chunk = X[start : start + batch].astype(origin.dtype).reshape((-1,) + origin.input_shape)
        (logits,) = session.run([origin.logits_name], {origin.input_name: chunk})
        out.append(np.asarray(logits, np.float64).reshape(len(chunk), -1))
    return np.concatenate(out) if out else np.zeros((0, net.n_classes))


@dataclass(frozen=True)
class OnnxCheck:
    """bnnmip's exact forward pass compared with onnxruntime on the same inputs.

    ``mismatches``: inputs whose predicted class differs; ``ties``: inputs on which some unit's
    pre-activation sits exactly on its threshold where ONNX ``Sign(0) = 0`` (bnnmip reads +1), so a
    difference there is the tie rule, not an error.  ``max_logit_error`` is the largest logit
    difference relative to the row's largest logit magnitude (at least 1), over inputs without ties.
    """

    n: int
    agree: int
    max_logit_error: float
    mismatches: np.ndarray
    ties: np.ndarray
    tolerance: float = 1e-4

    @property
    def ok(self) -> bool:
        """No prediction differs and all logits agree within the tolerance, ties aside."""
        return bool(np.all(np.isin(self.mismatches, self.ties))) and self.max_logit_error <= self.tolerance

    def __str__(self) -> str:
        return (
            f"{self.agree}/{self.n} predictions agree with onnxruntime, max relative logit error "
            f"{self.max_logit_error:.2e}, {len(self.ties)} inputs on a Sign(0) tie"
            + ("" if self.ok else f"; MISMATCHES at {self.mismatches[:10].tolist()}")
        )


def tie_inputs(net: BNN, X) -> np.ndarray:
    """Indices of inputs on which some unit sits exactly on a threshold where ONNX says Sign(0) = 0."""
    acts = net.forward(X)
    hit = np.zeros(len(acts.logits), bool)
    for stage, a in zip(net.threshold_stages, acts.pre):
        ties = getattr(stage, "sign_ties", None)
        if ties is not None and ties.any():
            hit |= np.any((a == stage.threshold) & ties, axis=1)
    return np.flatnonzero(hit)


def check_onnx(net: BNN, X, *args, path: str | os.PathLike | None = None, tolerance: float = 1e-4) -> OnnxCheck:
    """Compare ``net`` with onnxruntime running the original ONNX graph on the inputs ``X``.

    ``path`` may name the ONNX file explicitly (it must be the file ``net`` was loaded from);
    by default the model bytes validated when ``net`` was loaded are used.  The old call
    ``check_onnx(net, path_or_None, X)`` still works for one release (with a DeprecationWarning).
    """
    if args:  # check_onnx(net, path, X): the signature before 0.2
        if len(args) > 1 or path is not None:
            raise InvalidArgumentError("check_onnx: expected check_onnx(net, X, *, path=None)")
        warnings.warn("check_onnx(net, path, X) is deprecated; call check_onnx(net, X, path=path)",
                      DeprecationWarning, stacklevel=2)
        path, X = X, args[0]
    origin = _origin(net)
    if path is not None and os.path.abspath(path) != os.path.abspath(origin.path):
        raise InvalidArgumentError(f"path={str(path)!r}: net was loaded from {origin.path!r}")
    X = net.as_batch(X)
    ours, theirs = net.logits(X), onnx_logits(net, X)
    ties = tie_inputs(net, X)
    clean = np.setdiff1d(np.arange(len(X)), ties)
    scale = np.maximum(1.0, np.abs(theirs[clean]).max(axis=1, initial=0.0))
    err = np.abs(ours[clean] - theirs[clean]).max(axis=1, initial=0.0) / scale if len(clean) else np.zeros(0)
    pred_ours, pred_theirs = np.argmax(ours, axis=1), np.argmax(theirs, axis=1)
    mismatches = np.flatnonzero(pred_ours != pred_theirs)
    return OnnxCheck(
        n=len(X),
        agree=int(len(X) - len(mismatches)),
        max_logit_error=float(err.max(initial=0.0)),
        mismatches=mismatches,
        ties=ties,
        tolerance=tolerance,
    )


def require_exact(net: BNN, X) -> None:
    """Raise :class:`ExactnessError` unless ``net`` and onnxruntime agree on ``X``."""
    result = check_onnx(net, X)
    if not result.ok:
        raise ExactnessError(f"{net.source}: {result}")
