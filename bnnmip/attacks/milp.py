"""The exact attack: one MILP per target class, a shared time budget, proof or counterexample.

Untargeted, the targets are tried in order of the clean logit gap (closest class first). The
verdict is 'adversarial' as soon as a solution flips the prediction in bnnmip's exact forward
pass and in onnxruntime; 'robust' only when every target's MILP is solved to optimality with a
dual bound below zero; 'unknown' otherwise.

Time limits are honest: the bounds (interval or LP) are computed once for all targets, every
model build counts against the budget (the backends hand their solver only what is left), and a
small reserve is kept for judging the last incumbent in onnxruntime.
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import check_input, input_box
from ..milp.formulation import attack_bounds, attack_milp, check_bounds_mode
from ..milp.model import check_time_limit
from ..network import BNN
from .result import AttackResult, Tracker

# A dual bound must be this far below zero to certify a target (solver tolerances are ~1e-9).
CERTIFY_TOL = 1e-6
# Seconds kept back from the solver's limit for decoding and judging its last incumbent, and for
# the solver's own overshoot (HiGHS and SCIP check their clocks between units of work).
_RESERVE = 0.15
_MIN_SOLVE = 0.05  # below this, a solve is not worth starting


def milp_attack(
    net: BNN,
    x,
    eps,
    *,
    target: int | None = None,
    time_limit: float = 60.0,
    backend: str = "highs",
    levels: int | None = None,
    bounds: str = "interval",
    start=None,
    threads: int | None = None,
    verbose: bool = False,
    solver: str | None = None,
    stop_at_flip: bool = True,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with the exact MILP (see the module docstring).

    ``bounds`` is 'interval' or 'lp' (LP-tightened big-M constants, computed within the budget).
    ``start`` (an input in the box, e.g. a heuristic's best) warm-starts each MILP on native
    backends.  With ``stop_at_flip=False`` each target's MILP is maximised to the end (the paper's
    objective-over-time measurement) instead of stopping at the first verified flip.
    """
    time_limit = check_time_limit(time_limit)
    check_bounds_mode(bounds)
    xf = check_input(net, x)
    box = input_box(net, xf, eps, levels)
    tracker = Tracker(net, xf, float(eps), box, target)
    deadline = None if time_limit is None else tracker.t0 + time_limit - _RESERVE
    layer_bounds = attack_bounds(net, box, bounds, deadline=deadline)
    details, proved, bounds_seen = {}, 0, []
    for t in tracker.targets:
        if _left(deadline) <= _MIN_SOLVE:
            break
        model = attack_milp(net, xf, eps, t, levels=levels, label=tracker.label, layer_bounds=layer_bounds)
        remaining = None if deadline is None else _left(deadline)
        if remaining is not None and remaining <= _MIN_SOLVE:
            break
        outcome = _solve_target(model, tracker, backend, deadline, threads, verbose, solver, start, stop_at_flip)
        details[t] = outcome
        bounds_seen.append(outcome["bound"])
        proved += outcome["robust"]
        if tracker.flip is not None and stop_at_flip:
            break
    n = len(tracker.targets)
    complete = len(bounds_seen) == n and all(b is not None for b in bounds_seen)
    message = "" if proved == n or tracker.flip else f"{proved}/{n} targets proved robust within the time limit"
    return tracker.result("milp", backend, robust=proved == n, bound=max(bounds_seen) if complete else None,
                          message=message, details={"targets": details, "bounds": bounds,
                                                    "free_units": [b.n_free for b in layer_bounds]})


def _left(deadline: float | None) -> float:
    return np.inf if deadline is None else deadline - time.perf_counter()


def _limit(deadline: float | None) -> float | None:
    return None if deadline is None else _left(deadline)


def _solve_target(model, tracker: Tracker, backend, deadline, threads, verbose, solver, start, stop_at_flip):
    enc = model.info["encoding"]

    def on_incumbent(values, objective):
        return tracker.offer(enc.decode(values)) and stop_at_flip

    native = backend != "cvxpy"
    warm = enc.encode(start) if start is not None and native else None
    sol = model.solve(backend, time_limit=_limit(deadline), threads=threads, verbose=verbose, solver=solver,
                      start=warm, on_incumbent=on_incumbent if native else None)
    if sol.has_solution:
        tracker.offer(enc.decode(sol.values))
        if sol.objective > 0 and tracker.flip is None and not enc.exact:
            # A real-valued first layer: margin 0 is a relaxation whose optimum may sit exactly on a
            # threshold. Retry with a margin so that solutions land clearly on their side.
            _retry_with_margin(enc, tracker, backend, deadline, threads, verbose, solver)
    robust = sol.status == "optimal" and sol.bound is not None and sol.bound < -CERTIFY_TOL
    return {"status": sol.status, "objective": sol.objective, "bound": sol.bound, "time": sol.time,
            "robust": bool(robust), "message": sol.message}


def _retry_with_margin(enc, tracker: Tracker, backend, deadline, threads, verbose, solver) -> None:
    if _left(deadline) <= _MIN_SOLVE:
        return
    threshold = enc.net.layers[0].threshold
    scale = 1.0 + float(np.abs(threshold[np.isfinite(threshold)]).max(initial=0.0))  # ±inf: constant units
    strict = attack_milp(enc.net, enc.x, enc.eps, enc.target, levels=enc.levels, label=enc.label,
                         margin=1e-6 * scale, layer_bounds=enc.bounds)
    if _left(deadline) <= _MIN_SOLVE:
        return
    sol = strict.solve(backend, time_limit=_limit(deadline), threads=threads, verbose=verbose, solver=solver)
    if sol.has_solution:
        tracker.offer(strict.info["encoding"].decode(sol.values))
