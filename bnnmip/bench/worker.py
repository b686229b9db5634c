"""What runs on a Dask worker: :func:`execute` one :class:`Job` into a :class:`JobResult`.

Workers never write the results store; they return a small frozen :class:`JobResult` and the
coordinating process records it.  Each worker process keeps the networks it has loaded
(:func:`load_model`, keyed by path and sha256), so a model is read and calibrated once per worker.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..attacks import attack
from ..errors import ModelFileError
from ..io.onnx_reader import load_onnx
from ..status import JOB_ERROR
from .jobs import Job, file_sha256

ERROR = JOB_ERROR


@dataclass(frozen=True)
class JobResult:
    """The outcome of one job, as returned by a worker.

    ``status`` is an :class:`~bnnmip.attacks.AttackResult` status ('adversarial', 'robust',
    'unknown') or 'error' (the job raised: ``error`` holds the exception's type and message).
    ``trace`` is the anytime curve ((seconds, best objective), ...); ``wall_time`` the job's
    time on the worker, model loading included.  ``verified`` and ``linf`` carry the onnxruntime
    re-check of an adversarial input (:class:`~bnnmip.attacks.OnnxRecheck`: label changed,
    ``linf <= eps``, inside the input range).
    """

    status: str
    adv_label: int | None = None
    objective: float | None = None
    bound: float | None = None
    time: float | None = None
    verified: bool = False
    linf: float | None = None
    trace: tuple[tuple[float, float], ...] = ()
    message: str = ""
    error: str = ""
    wall_time: float = 0.0
    host: str = ""

    def trace_json(self) -> str:
        return json.dumps([[t, f] for t, f in self.trace])


@functools.lru_cache(maxsize=16)
def load_model(path: str, sha256: str, levels: int):
    """The network in ``path`` (cached per worker process); its bytes must still hash to ``sha256``."""
    actual = file_sha256(path)
    if actual != sha256:
        raise ModelFileError(f"{path}: the file changed since the benchmark started (sha256 {actual[:12]}..., "
                             f"expected {sha256[:12]}...)")
    return load_onnx(path, levels=levels)


def host_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(job: Job) -> JobResult:
    """Run one job.  Any exception becomes a result with status 'error' and its message (recorded, not hidden)."""
    t0 = time.perf_counter()
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():  # a worker's stderr is the user's terminal
            warnings.simplefilter("ignore", RuntimeWarning)
            net = load_model(job.model.path, job.model.sha256, job.levels)
            r = attack(net, job.input(), job.eps, **job.attack_options())
    except Exception as e:  # noqa: BLE001 - a failing job is a result of the benchmark, the others go on
        return JobResult(ERROR, error=f"{type(e).__name__}: {e}", wall_time=time.perf_counter() - t0,
                         host=host_name())
    return JobResult(
        status=r.status,
        adv_label=None if r.adv_label is None else int(r.adv_label),
        objective=_float(r.objective),
        bound=_float(r.bound),
        time=float(r.time),
        verified=bool(r.verified),
        linf=None if r.check is None else float(r.check.linf),
        trace=tuple((float(t), float(f)) for t, f in r.trace),
        message=r.message or "",
        wall_time=time.perf_counter() - t0,
        host=host_name(),
    )


def _float(value) -> float | None:
    return None if value is None else float(value)
