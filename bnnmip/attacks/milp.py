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

from dataclasses import dataclass

import numpy as np

from ..box import check_input, input_box
from ..milp.backend import get_backend
from ..milp.formulation import AttackModel, attack_bounds, attack_milp, check_bounds_mode
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..status import SolveStatus
from ..timing import Deadline
from .result import AttackResult
from .tracker import Tracker

# A dual bound must be this far below zero to certify a target (solver tolerances are ~1e-9).
CERTIFY_TOL = 1e-6
# Seconds kept back from the solver's limit for decoding and judging its last incumbent, and for
# the solver's own overshoot (HiGHS and SCIP check their clocks between units of work).
_RESERVE = 0.15
_MIN_SOLVE = 0.05  # below this, a solve is not worth starting


@dataclass(frozen=True)
class TargetOutcome:
    """How one target's MILP ended: the solver status, incumbent objective, dual bound and time;
    ``robust`` when it proved that no input in the box reaches the target."""

    status: SolveStatus
    objective: float | None
    bound: float | None
    time: float
    robust: bool
    message: str = ""


@reports_progress
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
    progress: Progress = NO_PROGRESS,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with the exact MILP (see the module docstring).

    ``bounds`` is 'interval' or 'lp' (LP-tightened big-M constants, computed within the budget).
    ``start`` (an input in the box, e.g. a heuristic's best) warm-starts each MILP on backends
    that take a warm start.  With ``stop_at_flip=False`` each target's MILP is maximised to the end
    (the paper's objective-over-time measurement) instead of stopping at the first verified flip.
    ``progress`` (True, a callable or a :class:`~bnnmip.progress.Progress`) hears the incumbent,
    each target's dual bound and the stage while it solves; quiet by default.
    """
    deadline = Deadline.start(time_limit)
    check_bounds_mode(bounds)
    xf = check_input(net, x)
    box = input_box(net, xf, eps, levels)
    progress.update(stage="MILP: bounds")
    tracker = Tracker(net, xf, float(eps), box, target, t0=deadline.t0, progress=progress)
    solving = deadline.shortened(_RESERVE)
    layer_bounds = attack_bounds(net, box, bounds, deadline=solving)
    solve = _TargetSolver(tracker, backend, solving, threads, verbose, solver, start, stop_at_flip, progress)
    outcomes: dict[int, TargetOutcome] = {}
    for i, t in enumerate(tracker.targets, 1):
        if solving.expired(_MIN_SOLVE):
            break
        progress.update(stage=f"MILP target {t} ({i}/{len(tracker.targets)})")
        model = attack_milp(net, xf, eps, t, levels=levels, label=tracker.label, layer_bounds=layer_bounds)
        if solving.expired(_MIN_SOLVE):
            break
        outcomes[t] = solve(model)
        if tracker.flip is not None and stop_at_flip:
            break
    n, proved = len(tracker.targets), sum(o.robust for o in outcomes.values())
    bounds_seen = [o.bound for o in outcomes.values()]
    complete = len(bounds_seen) == n and all(b is not None for b in bounds_seen)
    message = "" if proved == n or tracker.flip else f"{proved}/{n} targets proved robust within the time limit"
    failed = [f"target {t}: {o.message or o.status}" for t, o in outcomes.items() if o.status == SolveStatus.ERROR]
    if failed and not tracker.flip:  # a solver failure is said, not passed off as running out of time
        message = f"{message}; the solver failed on {len(failed)} target(s) ({failed[0]})"
    proof = f"MILP ({get_backend(backend).title}): every target's dual bound below 0"
    return tracker.result("milp", backend, robust=proved == n, bound=max(bounds_seen) if complete else None,
                          message=message, proof=proof, details={"targets": outcomes, "bounds": bounds,
                                                                 "free_units": [b.n_free for b in layer_bounds]})


@dataclass
class _TargetSolver:
    """Solves one target's MILP within the shared budget, offering every incumbent to the tracker."""

    tracker: Tracker
    backend: str
    deadline: Deadline
    threads: int | None
    verbose: bool
    solver: str | None
    start: np.ndarray | None
    stop_at_flip: bool
    progress: Progress

    def __call__(self, model: AttackModel) -> TargetOutcome:
        enc, caps = model.encoding, get_backend(self.backend).capabilities

        def on_incumbent(values, objective):
            return self.tracker.offer(enc.decode(values)) and self.stop_at_flip

        def on_progress(incumbent, bound):
            self.progress.update(bound=bound)

        warm = enc.encode(self.start) if self.start is not None and caps.warm_start else None
        sol = model.solve(self.backend, time_limit=self.deadline.seconds_left(), threads=self.threads,
                          verbose=self.verbose, solver=self.solver, start=warm,
                          on_incumbent=on_incumbent if caps.incumbent_callback else None,
                          on_progress=on_progress if caps.progress and self.progress.enabled else None)
        if sol.bound is not None:
            self.progress.update(bound=sol.bound)
        if sol.has_solution:
            self.tracker.offer(enc.decode(sol.values))
            if sol.objective > 0 and self.tracker.flip is None and not enc.exact:
                # A real-valued first layer: margin 0 is a relaxation whose optimum may sit exactly on a
                # threshold. Retry with a margin so that solutions land clearly on their side.
                self._retry_with_margin(model)
        robust = sol.proved_optimal and sol.bound is not None and sol.bound < -CERTIFY_TOL
        return TargetOutcome(sol.status, sol.objective, sol.bound, sol.time, bool(robust), sol.message)

    def _retry_with_margin(self, model: AttackModel) -> None:
        enc = model.encoding
        if self.deadline.expired(_MIN_SOLVE):
            return
        threshold = enc.net.layers[0].threshold
        scale = 1.0 + float(np.abs(threshold[np.isfinite(threshold)]).max(initial=0.0))  # ±inf: constant units
        strict = attack_milp(enc.net, enc.x, enc.eps, enc.target, levels=enc.levels, label=enc.label,
                             margin=1e-6 * scale, layer_bounds=enc.bounds)
        if self.deadline.expired(_MIN_SOLVE):
            return
        sol = strict.solve(self.backend, time_limit=self.deadline.seconds_left(), threads=self.threads,
                           verbose=self.verbose, solver=self.solver)
        if sol.has_solution:
            self.tracker.offer(strict.encoding.decode(sol.values))
