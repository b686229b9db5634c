r"""IProp: integer target propagation (Khalil, Gupta & Dilkina, ICLR 2019; DESIGN.md §7).

IProp replaces the one hard attack MILP by many small layer-local ones.  From the current input
:math:`x'` (clean, or PGD's best) with exact activations :math:`h_1..h_D` and objective
:math:`f = g \cdot h_D + \mathrm{const}`, :math:`g = A_t - A_c`, one iteration

1. **goals at the top**: every free unit of layer :math:`D` should take the sign of :math:`g_j`,
   with weight :math:`|g_j|` times a fresh log-normal factor (so the top subproblem maximises a
   smoothed change of :math:`f`, and each iteration asks for a different mix of units: the
   paper samples its top targets);
2. **propagates down**: for :math:`l = D..2` chooses at most :math:`S` flips of :math:`h_{l-1}`
   maximising the layer-local MAX-SAT objective of :mod:`~bnnmip.attacks.iprop_local` (satisfied
   targets, broken keeps, partial credit for progress) minus what each flip costs the layer below
   (its distance to its threshold over what that layer can reach: flips out of reach are not
   offered).  The flips become targets of layer :math:`l-1`, weighted by their marginal value;
   every other unit a keep weighted by what changing it would cost (or a bonus target);
3. **at the input**: chooses pixels in the box, within :math:`S` grid steps of the current input,
   that reach layer 1's goals (several candidates);
4. runs the exact forward pass on the candidates and moves to the best if
   :math:`(f, -\mathrm{potential})` improves, where the potential sums :math:`|g_j|` times the
   flips each disagreeing top unit still needs.  :math:`S` adapts; after many failures IProp
   restarts near the best input so far.  Untargeted, each iteration aims at the current runner-up.

``solver='local'`` (the default) solves the layer problems natively (greedy MAX-SAT local search
and a Lagrangian pixel heuristic, :mod:`~bnnmip.attacks.iprop_local`: well under a millisecond
per ±1 layer); ``solver='milp'`` solves the same layer problems exactly with ``backend``
(:mod:`~bnnmip.attacks.iprop_layers`: MILPs over ±1 layers and an LP over the pixels — an integer
program over grid steps on CP-SAT, which solves no LPs — built once and updated in place;
``reuse=False`` rebuilds them every time).  ``benchmarks/iprop_subproblems.py`` measures the
native solutions against the exact optima.
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import interval_bounds_from_box
from ..box import check_input, input_box
from ..errors import InvalidArgumentError
from ..milp.backend import get_backend
from ..milp.encoding import pixels_with_bits
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..timing import Deadline
from ..validate import check_choice
from .iprop_layers import LayerData, layer_data, layer_solver, solves_lps
from .iprop_local import BETA, Goals, LocalBinary, LocalInput
from .result import AttackResult
from .tracker import Tracker

SOLVERS = ("local", "milp")
_STEPS = (1, 2, 3, 5, 8, 13)  # the step size S: ±1 input changes, or grid steps per pixel
_PATIENCE = 32  # failed proposals before a restart
# Restarts after _PATIENCE failures, from (measured on near-miss tuning images, seed 1; flips at
# 10 s of 12 / at 60 s of 8): 'perturb' the best input with a tenth of its pixels redrawn (6 / 7),
# 'escalate' as perturb with 5-80 % redrawn (3 / 6), 'random' a uniform point of the box (2 / 6),
# 'clean' the clean input.  Step schedule on failure: 'walk' S one step up or down at random
# (6 / 7 with perturb), 'fixed' S = 3 (1 / 5 with escalate), 'cycle' through the steps.
RESTARTS = ("perturb", "escalate", "random", "clean")
SCHEDULES = ("walk", "fixed", "cycle")
# A flip's cost to the layer below, in mean target weights per unit of hardness (0, 0.25, 1.0
# flipped 33, 37, 29 of 186 hard pairs)
_COST = 0.25
# sigma of the log-normal factors on the top units' weights (tuning images, 3 s: without them
# IProp repeats the same failing proposal; 0.25, 0.5, 1.0 flipped 52, 55, 48 of 186 hard pairs)
_TOP_NOISE = 0.5


def _changes_needed(a: np.ndarray, theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.where(h > 0, np.floor((a - theta) / 2) + 1, np.ceil((theta - a) / 2))


class _IProp:
    """The state of one IProp run on one input (see the module docstring)."""

    def __init__(self, net: BNN, tracker: Tracker, box, solver: str, backend: str, reuse: bool, threads, rng,
                 sub_time_limit, mip_gap: float):
        self.net, self.tracker, self.box, self.rng = net, tracker, box, rng
        self.base = box.snap(tracker.x)
        self.bounds = interval_bounds_from_box(net, box)
        self.has_ib = net.input_binarization is not None
        self.sub_time_limit = sub_time_limit
        finite = np.abs(net.layers[0].threshold[np.isfinite(net.layers[0].threshold)])
        self.margin = margin = 1e-6 * (1.0 + float(finite.max(initial=0.0)))
        first = 1 if self.has_ib else 0
        self.local = solver == "local"
        # Pixels stay on the grid natively and in an integer program; an LP rounds them.
        self.rounded = not self.local and solves_lps(backend)
        self.layers = {
            k: layer_data(net, k, box, self.bounds, self.base, margin, rounded=self.rounded)
            for k in range(first, len(net.threshold_stages))
            if np.any(self.bounds[k].fixed == 0) and (k == 0 or np.any(self.bounds[k - 1].fixed == 0))
        }
        self.solver_options = (backend, reuse, threads, mip_gap)
        # The native stages also measure what each stage can reach, whichever solver solves.
        self.native = {k: LocalInput(d) if d.kind == "pixels" else LocalBinary(d) for k, d in self.layers.items()}
        self.solvers = {}
        if not self.local and reuse:
            self.solvers = {k: layer_solver(d, *self.solver_options) for k, d in self.layers.items()}
        self.iterations = self.accepted = self.restarts = self.candidates = 0
        self.restart, self.schedule = "perturb", "walk"

    # ------------------------------------------------------------------ scoring
    def score_batch(self, X: np.ndarray, target: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f, -potential, target) per row of ``X``; ``target=None`` picks each row's runner-up class."""
        acts = self.net.forward(X)
        label, logits = self.tracker.label, acts.logits
        targets = np.asarray(self.tracker.targets)
        if target is None:
            tgt = targets[np.argmax(logits[:, targets], axis=1)]
        else:
            tgt = np.full(len(X), target)
        rows = np.arange(len(X))
        f = logits[rows, tgt] - logits[:, label]
        G = self.net.out_weight[tgt] - self.net.out_weight[label]
        h, a = acts.post[-1], acts.pre[-1]
        wrong = (h != np.sign(G)) & (G != 0) & (self.bounds[-1].fixed == 0)
        need = _changes_needed(a, self.net.layers[-1].threshold, h)
        return f, -np.sum(np.abs(G) * need * wrong, axis=1), tgt

    # ------------------------------------------------------------------ one iteration
    def propose(self, x: np.ndarray, acts, target: int, S: int, deadline: float) -> list[np.ndarray]:
        """One backward pass of target propagation from input ``x`` (activations ``acts``): candidate inputs."""
        net, label = self.net, self.tracker.label
        k = len(net.threshold_stages) - 1
        g = net.out_weight[target] - net.out_weight[label]
        # Random weights: each iteration asks for a different mix of the top units (the paper samples them).
        noise = self.rng.lognormal(0.0, _TOP_NOISE, len(g)) if _TOP_NOISE > 0 else 1.0
        goals = Goals(np.where(self.bounds[k].fixed == 0, np.sign(g), 0.0), np.abs(g) * noise)
        while True:
            problem = self.layers.get(k)
            if problem is None:
                return []
            inp = self._inputs_now(x, acts, k, problem)
            if problem.kind == "pixels":
                return [self._pixels(x, problem, v) for v in self._solve_pixels(k, inp, acts, goals, S, deadline)]
            movable, cost = self._reach_below(x, acts, k, goals, S)
            new = self._solve_binary(k, inp, acts, goals, S, movable, cost, deadline)
            if new is None or np.array_equal(new, inp):
                return []
            if self.has_ib and k == 1:
                changed = new != inp
                return [self._bits(x, problem.inputs[changed], new[changed])]
            bits, weight = self.native[k].marginal_goals(inp, new, goals)
            k -= 1
            desired = np.zeros(len(self.bounds[k].fixed))
            weights = np.zeros(len(desired))
            desired[problem.inputs], weights[problem.inputs] = 2.0 * bits - 1.0, weight
            goals = Goals(desired, weights)

    def _solve_binary(self, k, inp, acts, goals: Goals, S, movable, cost, deadline):
        if self.local:
            return self.native[k].solve(inp, goals, S, movable, cost, self.rng)
        h = acts.post[k][0]
        return self._backend_solver(k).solve(inp, h, goals.weight, goals.desired, S, self._sub_limit(deadline),
                                             movable, None, cost, BETA)

    def _solve_pixels(self, k, inp, acts, goals: Goals, S, deadline) -> list[np.ndarray]:
        if self.local:
            return self.native[k].solve(inp, goals, S, self.rng)
        h = acts.post[k][0]
        hard = goals.weight > 0  # the LP holds every unit with a goal that is not a target
        new = self._backend_solver(k).solve(inp, h, goals.weight, goals.desired, S, self._sub_limit(deadline),
                                            None, hard)
        return [] if new is None else [new]

    def _backend_solver(self, k: int):
        if k in self.solvers:
            return self.solvers[k]
        # Rebuilt from the network, as an implementation without in-place updates would.
        data = layer_data(self.net, k, self.box, self.bounds, self.base, self.margin, rounded=self.rounded)
        return layer_solver(data, *self.solver_options)

    def _reach_below(self, x, acts, k: int, goals: Goals, S: int) -> tuple[np.ndarray, np.ndarray]:
        """For the problem at stage ``k``: which input columns the stage below can flip alone, and
        each flip's cost (hardness: the distance to the threshold over what can be reached)."""
        problem, below = self.layers[k], self.layers.get(k - 1)
        n = len(problem.inputs)
        if below is None:  # input bits: every free bit can take either value
            return np.ones(n, bool), np.zeros(n)
        inp = self._inputs_now(x, acts, k - 1, below)
        hard = self.native[k - 1].hardness(inp, acts.post[k - 1][0], S)[problem.inputs]
        movable = (hard <= 1.0) & ~below.box_fixed[problem.inputs]
        targets = goals.weight[goals.desired != 0]
        scale = float(targets.mean()) if len(targets) else 0.0
        return movable, _COST * scale * np.where(movable, hard, 0.0)

    def _inputs_now(self, x: np.ndarray, acts, k: int, problem: LayerData) -> np.ndarray:
        """Current values of a problem's input columns: bits 0/1, grid steps or pixel values."""
        if problem.kind == "binary":
            return (acts.post[k - 1][0][problem.inputs] > 0).astype(np.float64)
        if problem.grid:
            return self.box.to_steps(x[problem.inputs])
        return x[problem.inputs]

    def _pixels(self, x: np.ndarray, problem: LayerData, values: np.ndarray) -> np.ndarray:
        out = x.copy()
        if problem.grid:
            out[problem.inputs] = self.box.from_steps(values)
            return out
        out[problem.inputs] = values
        # Real first-layer weights on a grid: the columns are values, so snap them to the grid.
        return self.box.snap(out)

    def _bits(self, x: np.ndarray, bits: np.ndarray, on: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[bits] = pixels_with_bits(self.net, self.box, x, bits, on > 0.5)
        return out

    def _sub_limit(self, deadline: float) -> float:
        return min(self.sub_time_limit, deadline - time.perf_counter())

    # ------------------------------------------------------------------ the loop
    def run(self, x0: np.ndarray, deadline: float, max_iterations: int | None) -> None:
        """Propose, judge, accept on improvement; adapt the step; restart when stuck.

        Untargeted, each iteration aims at the runner-up class of the current input (the class
        the objective ``max_t logit_t - logit_label`` is about), so IProp follows whichever
        class is closest as the input moves.
        """
        tracker = self.tracker
        fixed_target = tracker.target
        x = self.box.snap(x0)
        f, pot, tgt = self.score_batch(x[None, :], fixed_target)
        best, target, acts = (f[0], pot[0]), int(tgt[0]), self.net.forward(x)
        step, failures = 2, 0
        while time.perf_counter() < deadline and tracker.flip is None:
            if max_iterations is not None and self.iterations >= max_iterations:
                break
            self.iterations += 1
            candidates = self.propose(x, acts, target, _STEPS[step], deadline)
            if candidates:
                X = np.array(candidates)
                self.candidates += len(X)
                f, pot, tgt = self.score_batch(X, fixed_target)
                i = max(range(len(X)), key=lambda j: (f[j], pot[j]))
                tracker.offer(X[i], float(f[i]))
                if (f[i], pot[i]) > best and not np.array_equal(X[i], x):
                    x, best, target, failures = X[i], (f[i], pot[i]), int(tgt[i]), 0
                    acts = self.net.forward(x)
                    self.accepted += 1
                    continue
            failures += 1
            if self.schedule == "walk":
                step = int(np.clip(step + self.rng.choice([-1, 1]), 0, len(_STEPS) - 1))
            elif self.schedule == "cycle":
                step = (step + 1) % len(_STEPS)
            if failures >= _PATIENCE:
                self.restarts += 1
                x = self._restart_point(tracker.x_best, x0)
                tracker.offer(x)  # a random restart may flip the prediction by itself
                f, pot, tgt = self.score_batch(x[None, :], fixed_target)
                best, target, failures, step = (f[0], pot[0]), int(tgt[0]), 0, 2
                acts = self.net.forward(x)

    def _restart_point(self, x_best: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """Where a restart starts (:data:`RESTARTS`): by default the best input so far with a random
        tenth of its free pixels redrawn inside the box."""
        if self.restart == "clean":
            return self.box.snap(x0)
        if self.restart == "random":
            return self.box.random(self.rng, 1)[0]
        x = x_best.copy()
        movable = np.flatnonzero(self.box.open)
        if len(movable) == 0:
            return x
        share = 0.1 if self.restart == "perturb" else min(0.8, 0.05 * 2 ** ((self.restarts - 1) % 5))
        pick = self.rng.choice(movable, size=max(1, int(len(movable) * share)), replace=False)
        x[pick] = self.box.random(self.rng, 1, pick)[0]
        return x


@reports_progress
def iprop_attack(
    net: BNN,
    x,
    eps,
    *,
    start=None,
    target: int | None = None,
    time_limit: float = 60.0,
    backend: str = "highs",
    levels: int | None = None,
    seed: int = 0,
    solver: str = "local",
    reuse: bool = True,
    threads: int | None = None,
    sub_time_limit: float = 0.3,
    mip_gap: float = 0.05,
    max_iterations: int | None = None,
    restart: str = "perturb",
    schedule: str = "walk",
    progress: Progress = NO_PROGRESS,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with IProp (see the module docstring).

    ``start`` is an input in the box to start from (PGD's best for ``iprop+pgd``; default the
    clean input).  ``solver`` picks how the layer problems are solved: 'local' (native local
    search, the default) or 'milp' (exactly, by ``backend``; ``reuse=False`` rebuilds every
    layer-local model at every solve, to measure what in-place updates save).  IProp never
    claims 'robust'.  ``restart`` and ``schedule`` pick where restarts start and how the step
    size moves after a failure (:data:`RESTARTS`, :data:`SCHEDULES`; the defaults measured best).
    ``progress`` (True, a callable or a :class:`~bnnmip.progress.Progress`) hears the best
    objective as it improves; quiet by default.
    """
    check_choice(solver, SOLVERS, "solver")
    solver_backend = get_backend(backend)  # an unknown name is an error even where it goes unused
    if solver == "milp":
        solver_backend.require()
    check_choice(restart, RESTARTS, "restart")
    check_choice(schedule, SCHEDULES, "schedule")
    if solver == "local" and not reuse:
        raise InvalidArgumentError("reuse=False: only solver='milp' builds layer models to reuse")
    deadline = Deadline.start(time_limit)
    xf = check_input(net, x)
    box = input_box(net, xf, eps, levels)
    progress.update(stage="IProp")
    tracker = Tracker(net, xf, float(eps), box, target, t0=deadline.t0, progress=progress)
    x0 = xf if start is None else check_input(net, start)
    if start is not None:
        tracker.offer(box.snap(x0))
    state = _IProp(net, tracker, box, solver, backend, reuse, threads, np.random.default_rng(seed), sub_time_limit,
                   mip_gap)
    state.restart, state.schedule = restart, schedule
    state.run(x0, deadline.end, max_iterations)
    details = {"iterations": state.iterations, "accepted": state.accepted, "restarts": state.restarts,
               "candidates": state.candidates}
    return tracker.result("iprop", backend, details=details)
