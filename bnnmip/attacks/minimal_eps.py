r"""The smallest L∞ radius on the input grid that changes the prediction, by a proven-correct search.

On the grid :math:`x = lo + k\,(hi - lo)/L`, radii are whole steps :math:`r \in \{1, \dots, L\}` and the
boxes are nested, so "some input within radius :math:`r` changes the prediction" is monotone in
:math:`r`.  Each step of the search decides it for one radius with the exact engine
(:func:`bnnmip.verify`, ``method`` one of its routes; 'milp' is the paper's MILP alone): a verified
flip proves :math:`r^* \le` its actual distance (often below :math:`r`), a robust verdict proves
:math:`r^* > r`.

Search: radii 1, 2, 4, 8, ... until a flip (doubling: the DESIGN's walk over radii with models
that stay small, in logarithmically many steps; each step gets a quarter of the remaining time,
and a step the MILP leaves undecided gets a short PGD run, whose verified flip is as good an upper
bound as the MILP's), then bisection between the largest radius proven robust and the smallest
distance at which a flip was found (half the remaining time per step, all of it for the last).
A step that ends 'unknown' (time limit) proves nothing; the search then probes below it, and if
the budget runs out the result reports the bounds it has: ``proven_robust_below <= r* <= found_adversarial_at``.
The answer is exact when the two meet, which also means radius ``r* - 1`` was proven robust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..box import DEFAULT_LEVELS, Radius, check_input, input_box, on_grid
from ..errors import InvalidArgumentError
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..status import SearchStatus, Verdict
from ..timing import Deadline
from ..validate import check_choice, check_levels
from ..verify.engine import ROUTES, verify
from .milp import milp_attack
from .pgd import pgd_attack
from .result import OnnxRecheck, recheck
from .save import jsonable, save_result

_PGD_SECONDS = 2.0  # at most, after an undecided MILP while growing: a flip found bounds the radius


@dataclass
class MinimalEpsResult:
    """The outcome of :func:`minimal_eps`.

    Radii are in grid steps (``eps = steps * (hi - lo) / levels``).  Every radius below
    ``proven_robust_below`` was proven robust (radius 0, the clean input, always is; ``proof`` says
    by what); a verified flip ``x_adv`` was found at L∞ distance ``found_adversarial_at`` (None: none
    found), re-checked by onnxruntime (``check``).  ``exact`` when they meet: then ``steps`` / ``eps``
    is the minimal radius.  When no radius up to the whole input range changes the prediction,
    ``proven_robust_below = levels + 1`` and ``exact`` is True with ``steps = None``.  ``decisions``
    lists (radius, verdict, seconds) for every MILP decision (and PGD run), in the order made.
    """

    exact: bool
    steps: int | None
    eps: float | None
    proven_robust_below: int
    found_adversarial_at: int | None
    x_adv: np.ndarray | None
    label: int
    adv_label: int | None
    verified: bool
    levels: int
    step: float
    time: float
    backend: str
    decisions: list = field(default_factory=list)
    message: str = ""
    x: np.ndarray | None = None
    check: OnnxRecheck | None = None
    proof: str = ""

    @property
    def status(self) -> SearchStatus:
        """'exact' (the minimal radius is known), 'robust' (no radius flips) or 'bounds'."""
        if self.exact:
            return SearchStatus.ROBUST if self.steps is None else SearchStatus.EXACT
        return SearchStatus.BOUNDS

    def radius(self, steps: int) -> Radius:
        return Radius(steps * self.step, steps, self.levels, self.step)

    def summary(self) -> str:
        """The result as ``key  value`` lines (the command line prints them; the README explains each)."""
        if self.status == SearchStatus.EXACT:
            answer = f"{self.radius(self.steps)} (radius {self.steps - 1} proven robust)"
        elif self.status == SearchStatus.ROBUST:
            answer = "no radius up to the whole input range changes the prediction"
        else:
            upper = "-" if self.found_adversarial_at is None else str(self.radius(self.found_adversarial_at))
            answer = f"between {self.radius(self.proven_robust_below)} and {upper} (not all decided)"
        rows = [
            ("minimal", answer),
            ("grid", f"{self.levels} levels, step {self.radius(1)}"),
            ("label", str(self.label)),
            ("adv_label", "-" if self.adv_label is None else str(self.adv_label)),
        ]
        if self.check is not None:
            rows.append(("onnxruntime", self.check.describe()))
        if self.proven_robust_below > 1:
            rows.append(("proof", f"radius {self.proven_robust_below - 1}: {self.proof}"))
        rows += [
            ("decisions", ", ".join(f"r={r}: {v} ({t:.2f} s)" for r, v, t in self.decisions) or "-"),
            ("time", f"{self.time:.2f} s"),
        ]
        if self.message:
            rows.append(("note", self.message))
        return "\n".join(f"{k:<10} {v}" for k, v in rows)

    def to_dict(self) -> dict:
        """The result as JSON-ready values (the inputs go to .npy files: :meth:`save`)."""
        names = ("exact", "steps", "eps", "proven_robust_below", "found_adversarial_at", "label", "adv_label",
                 "verified", "levels", "step", "time", "backend", "message", "proof")
        out = {"status": self.status, **{name: getattr(self, name) for name in names}}
        out["onnxruntime"] = None if self.check is None else self.check.to_dict()
        out["decisions"] = [{"radius": r, "verdict": v, "seconds": t} for r, v, t in self.decisions]
        return jsonable(out)

    def save(self, directory: str | os.PathLike, shape: tuple[int, ...] | None = None,
             context: dict | None = None) -> list[Path]:
        """Write ``result.json``, ``x.npy`` and, with a flip, ``x_adv.npy`` and ``triptych.png``."""
        return save_result(self, directory, shape=shape, context=context)


@reports_progress
def minimal_eps(net: BNN, x, *, levels: int = DEFAULT_LEVELS, time_limit: float | None = 60.0, backend: str = "highs",
                bounds: str = "interval", threads: int | None = None, solver: str | None = None,
                method: str = "auto", progress: Progress = NO_PROGRESS) -> MinimalEpsResult:
    """The smallest L∞ radius on the grid of ``levels`` steps at which some input changes the prediction.

    ``x`` must lie on the grid.  ``time_limit`` (seconds, shared by all steps) bounds the search;
    see the module docstring for the search and :class:`MinimalEpsResult` for what is reported.
    ``progress`` (True, a callable or a :class:`~bnnmip.progress.Progress`) hears every step's
    radius, incumbent and bound; quiet by default.
    """
    levels = check_levels(levels)
    if levels is None:
        raise InvalidArgumentError("levels=None: minimal_eps measures radii in grid steps; give levels")
    deadline = Deadline.start(time_limit)
    xf = check_input(net, x)
    lo, hi = net.input_range
    off_grid = np.flatnonzero(~on_grid(xf, levels, net.input_range))
    if len(off_grid):
        i = int(off_grid[0])
        raise InvalidArgumentError(f"x: input {i} = {xf[i]!r} is not on the grid of levels={levels}")
    check_choice(method, ROUTES, "method")
    return _Search(net, xf, levels, (hi - lo) / levels, deadline, backend, bounds, threads, solver, method,
                   progress).run()


class _Search:
    """The state of one search: the bracket [robust, adversarial] and the decisions made."""

    def __init__(self, net, x, levels, step, deadline: Deadline, backend, bounds, threads, solver, method,
                 progress: Progress = NO_PROGRESS):
        self.net, self.x, self.levels, self.step, self.progress = net, x, levels, step, progress
        self.method = method
        self.deadline, self.backend, self.bounds, self.threads, self.solver = (deadline, backend, bounds,
                                                                               threads, solver)
        self.label = int(net.predict(x)[0])
        self.robust = 0  # largest radius proven robust
        self.flip = None  # (radius, x_adv, adv_label, verified, check) of the closest verified flip
        self.proof = ""  # how the largest robust radius was proven
        self.cap = levels + 1  # the smallest radius left unknown (bisection probes below it)
        self.decisions = []

    def left(self) -> float:
        return self.deadline.remaining()

    def upper(self) -> int:
        return self.levels + 1 if self.flip is None else self.flip[0]

    def decide(self, r: int, share: float, heuristic: bool = False) -> str:
        """Run the untargeted MILP at radius ``r`` with ``share`` of the remaining time.

        With ``heuristic``, an undecided MILP is followed by a short PGD run, which may still find
        a (verified) flip and so an upper bound.
        """
        budget = max(self.left() * share, 0.0) if self.deadline.limited else None
        if budget is not None and budget <= 0.05:
            return Verdict.UNKNOWN
        report = self.progress.scoped(f"radius {r}/{self.levels}")
        if self.method == "milp":  # the paper's MILP, as before the exact engine
            result = milp_attack(self.net, self.x, r * self.step, time_limit=budget, backend=self.backend,
                                 levels=self.levels, bounds=self.bounds, threads=self.threads, solver=self.solver,
                                 progress=report)
        else:
            result = verify(self.net, self.x, r * self.step, time_limit=budget, levels=self.levels, method=self.method,
                            backend=self.backend, threads=self.threads, progress=report)
        self.decisions.append((r, result.status, result.time))
        if result.status == Verdict.UNKNOWN and heuristic:
            quick = min(_PGD_SECONDS, 0.1 * self.left())
            if quick > 0.05:
                result = pgd_attack(self.net, self.x, r * self.step, time_limit=quick, levels=self.levels,
                                    progress=report)
                self.decisions.append((r, f"pgd: {result.status}", result.time))
        if result.status == Verdict.ROBUST:
            if r > self.robust:
                self.robust, self.proof = r, result.proof
        elif result.status == Verdict.ADVERSARIAL:
            distance = int(np.rint(np.abs(result.x_adv - self.x).max() / self.step))
            if distance <= self.robust:  # a flip inside a box proven robust: a bnnmip bug, never data
                raise AssertionError(f"flip at distance {distance} inside radius {self.robust} proven robust")
            flip = (distance, result.x_adv, result.adv_label, result.verified, result.check)
            closer = self._closer(result.x_adv, distance)
            if closer is not None:
                flip = closer
                self.decisions.append((closer[0], f"{Verdict.ADVERSARIAL} (the flip moved closer)", 0.0))
            if self.flip is None or flip[0] < self.flip[0]:
                self.flip = flip
        else:
            self.cap = min(self.cap, r)
        return result.status

    def _closer(self, x_adv: np.ndarray, distance: int):
        """The flip ``x_adv`` pulled towards ``x``: every pixel's change clipped to ``d`` grid steps, for
        each ``d`` between the radius proven robust and ``distance``, judged in one exact forward
        batch; the smallest ``d`` that still changes the prediction, confirmed by onnxruntime, is a
        tighter upper bound for free (a flip found at a large radius rarely needs all of it).
        Returns a flip tuple as ``self.flip`` holds, or None."""
        d = np.arange(self.robust + 1, distance)
        if not len(d):
            return None
        box = input_box(self.net, self.x, distance * self.step, self.levels)
        k, k_adv = box.to_steps(self.x), box.to_steps(x_adv)
        candidates = box.from_steps(k + np.clip(k_adv - k, -d[:, None], d[:, None]))
        predicted = self.net.predict(candidates)
        for i in np.flatnonzero(predicted != self.label)[:3]:  # closest first; onnxruntime must agree
            check = recheck(self.net, self.x, candidates[i], d[i] * self.step, self.label)
            if check is None or check.ok:
                return int(d[i]), candidates[i], int(predicted[i]), check is not None, check
        return None

    def run(self) -> MinimalEpsResult:
        self._grow()
        self._bisect()
        return self._result()

    def _grow(self) -> None:
        """Radii 1, 2, 4, ... (then the whole range) until a flip or no time; an unknown step is skipped."""
        r = 1
        while self.flip is None and self.left() > 0.05:
            self.decide(r, 0.25, heuristic=True)
            if r >= self.levels:
                return
            r = min(2 * r, self.levels)

    def _bisect(self) -> None:
        """Halve the undecided radii (robust, min(cap, upper)) until none is left or time runs out.

        A radius left unknown caps the bracket; when it is the only radius left, it is retried once
        with all the remaining time.
        """
        retried = False
        while self.left() > 0.05 and self.upper() - self.robust > 1:
            lo, hi = self.robust, min(self.cap, self.upper())
            if hi - lo <= 1:  # the cap (an unknown radius) is the next undecided radius
                if retried:
                    return
                retried, self.cap = True, self.levels + 1
                self.decide(lo + 1, 1.0)
                continue
            last = hi - lo == 2 and hi == self.upper()
            self.decide((lo + hi) // 2, 1.0 if last else 0.5)

    def _result(self) -> MinimalEpsResult:
        upper = None if self.flip is None else self.flip[0]
        no_flip = self.flip is None and self.robust >= self.levels
        exact = no_flip or (upper is not None and upper == self.robust + 1)
        steps = upper if exact and not no_flip else None
        x_adv, adv_label, verified, check = (None, None, False, None) if self.flip is None else self.flip[1:]
        message = "" if exact else "not every radius was decided within the time limit"
        return MinimalEpsResult(
            exact=exact, steps=steps, eps=None if steps is None else steps * self.step,
            proven_robust_below=self.robust + 1, found_adversarial_at=upper, x_adv=x_adv, label=self.label,
            adv_label=adv_label, verified=verified, levels=self.levels, step=self.step,
            time=self.deadline.elapsed(), backend=self.backend, decisions=self.decisions, message=message,
            x=self.x, check=check, proof=self.proof,
        )
