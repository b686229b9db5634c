"""Attacks chained within one time budget (IProp warm-started by PGD; 'best' in :mod:`.best`).

A *warm* stage starts from the best input the earlier stages found (their ``x_best``); the
anytime traces are joined on one clock, and the result is the last stage's verdict unless an
earlier stage already flipped the prediction (or proved robustness).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..box import check_input
from ..errors import InvalidArgumentError
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..status import Verdict
from ..timing import Deadline
from .iprop import iprop_attack
from .pgd import pgd_attack
from .result import AttackResult

# PGD restarts for this share of the time limit, then IProp starts from the best input PGD
# found (PGD finds most of what it ever finds in its first few hundred restarts).
PGD_SHARE = 0.2


def chain(net: BNN, x, eps, stages, *, method: str, target, time_limit: float, backend: str,
           progress: Progress) -> AttackResult:
    """Run ``stages`` ((share, attack, options, warm), ...) in turn within one budget; a ``warm``
    stage starts from the best input any earlier stage found."""
    deadline = Deadline.start(time_limit)
    if not deadline.limited:
        raise InvalidArgumentError(f"time_limit=None: method {method!r} shares a time budget between its stages; "
                                   "give a number of seconds")
    xf = check_input(net, x)
    start, start_objective, trace, last, details = None, -np.inf, [], None, {}
    for share, attack_fn, options, warm in stages:
        if deadline.expired(0.05):
            break
        budget = deadline.remaining()
        if share is not None:
            budget = min(budget, share * (deadline.end - deadline.t0))
        offset = deadline.elapsed()
        kwargs = dict(options, progress=progress, **({"start": start} if warm and start is not None else {}))
        result = attack_fn(net, xf, eps, target=target, time_limit=budget, backend=backend, **kwargs)
        trace += [(offset + t, f) for t, f in result.trace if not trace or f > trace[-1][1]]
        details[result.method] = result.details
        if result.x_best is not None and result.objective is not None and result.objective > start_objective:
            start, start_objective = result.x_best, result.objective
        last = result
        if result.status in (Verdict.ADVERSARIAL, Verdict.ROBUST):
            break
    objective = max(start_objective, -np.inf if last.objective is None else last.objective)
    return replace(last, method=method, backend=backend, trace=trace, time=deadline.elapsed(), details=details,
                   x_best=start, objective=objective if np.isfinite(objective) else last.objective)


@reports_progress
def iprop_pgd_attack(net: BNN, x, eps, *, target: int | None = None, time_limit: float = 60.0,
                     backend: str = "highs", levels: int | None = None, pgd_share: float = PGD_SHARE, seed: int = 0,
                     progress: Progress = NO_PROGRESS, **iprop_options) -> AttackResult:
    """PGD for ``pgd_share`` of the budget, then IProp from PGD's best input (the paper's warm start)."""
    common = {"levels": levels, "seed": seed}
    stages = [(pgd_share, pgd_attack, common, False), (None, iprop_attack, {**common, **iprop_options}, True)]
    return chain(net, x, eps, stages, method="iprop+pgd", target=target, time_limit=time_limit, backend=backend,
                  progress=progress)
