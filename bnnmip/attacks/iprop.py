r"""IProp: integer target propagation (Khalil, Gupta & Dilkina, ICLR 2019; DESIGN.md §7).

IProp replaces the one hard attack MILP by many small layer-local ones.  From the current input
:math:`x'` (clean, or PGD's best) with exact activations :math:`h_1..h_D` and objective
:math:`f = g \cdot h_D + \mathrm{const}`, :math:`g = A_t - A_c`, one iteration

1. **targets at the top**: samples at most :math:`S` units of layer :math:`D` whose sign disagrees
   with :math:`g` (probability :math:`\propto |g_j|`) and can flip with :math:`S` input changes;
2. **propagates down**: for :math:`l = D..2` solves a MILP over :math:`h_{l-1}` (binaries, at most
   :math:`S` changes) maximising the weighted number of layer-:math:`l` units that end where they
   should: targets at their new value (weight :math:`|g_j|` at the top, 1 below), every other unit
   that could move kept where it is (at the top weighted by :math:`|g_j|`, so the top subproblem
   maximises the true change of :math:`f` over the units it can reach; below, weight 1/2).  The
   units of :math:`h_{l-1}` that change become the targets of the layer below;
3. **at the input**: finds the perturbation (in the box, within a trust region of S grid steps)
   that moves layer 1's targets furthest toward their thresholds while every other unit stays
   put: a linear program of capped progress (see :class:`_InputLp`); with input binarization the
   bits are chosen by the layer-1 MILP and the pixels follow;
4. runs the exact forward pass and keeps the new input if :math:`(f, -\mathrm{potential})`
   improves, where the potential sums :math:`|g_j|` times the input changes each disagreeing
   top unit still needs (so plateau moves that bring flips closer are kept).  The step size
   :math:`S` adapts; after many failures IProp restarts near the best input so far.  Untargeted,
   each iteration aims at the current runner-up class.

Every layer-local MILP is built once per attack and then updated in place (objective, column and
row bounds, the change-budget row) through a backend session; ``reuse=False`` rebuilds it every
time instead (for measurement).  Only units that can actually move keep their rows active, so
each solve is small.
"""

from __future__ import annotations

import time

import numpy as np

from ..bounds import interval_bounds_from_box
from ..box import check_input, input_box
from ..milp.encoding import pixels_with_bits
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..timing import Deadline
from .iprop_layers import LayerData, layer_data, layer_solver
from .result import AttackResult
from .tracker import Tracker

_STEPS = (1, 2, 3, 5, 8, 13)  # the step size S: ±1 input changes, or grid steps per pixel
_PATIENCE = 32  # failed proposals before a restart
_SOFT_KEEP = 0.5  # weight of kept units below the top (targets weigh 1)


def _reachable(a: np.ndarray, theta: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
    """Units of a ±1 layer that ``S`` input changes (each moving ``a`` by 2) can flip."""
    return np.where(h > 0, a - 2 * S <= theta - 2, a + 2 * S >= theta)


def _changes_needed(a: np.ndarray, theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.where(h > 0, np.floor((a - theta) / 2) + 1, np.ceil((theta - a) / 2))


class _IProp:
    """The state of one IProp run on one input (see the module docstring)."""

    def __init__(self, net: BNN, tracker: Tracker, box, backend: str, reuse: bool, threads, rng, sub_time_limit,
                 mip_gap: float):
        """``reuse=False`` rebuilds each layer problem from the network at every solve."""
        self.net, self.tracker, self.box, self.rng = net, tracker, box, rng
        self.base = box.snap(tracker.x)
        self.bounds = interval_bounds_from_box(net, box)
        self.has_ib = net.input_binarization is not None
        self.sub_time_limit = sub_time_limit
        finite = np.abs(net.layers[0].threshold[np.isfinite(net.layers[0].threshold)])
        self.margin = margin = 1e-6 * (1.0 + float(finite.max(initial=0.0)))
        first = 1 if self.has_ib else 0
        self.layers = {
            k: layer_data(net, k, box, self.bounds, self.base, margin)
            for k in range(first, len(net.threshold_stages))
            if np.any(self.bounds[k].fixed == 0) and (k == 0 or np.any(self.bounds[k - 1].fixed == 0))
        }
        self.solver_options = (backend, reuse, threads, mip_gap)
        self.solvers = {k: layer_solver(d, *self.solver_options) for k, d in self.layers.items()} if reuse else {}
        self.iterations = self.accepted = self.restarts = 0

    # ------------------------------------------------------------------ scoring
    def score(self, x: np.ndarray, target: int | None) -> tuple[tuple[float, float], int]:
        """((f, -potential), target) of an input: ``target=None`` picks the runner-up class of ``x``
        among the attack's targets, and ``f`` is then the attack's objective (max over targets)."""
        acts = self.net.forward(x)
        label, logits = self.tracker.label, acts.logits[0]
        if target is None:
            targets = self.tracker.targets
            target = int(targets[int(np.argmax(logits[targets]))])
        f = float(logits[target] - logits[label])
        g = self.net.out_weight[target] - self.net.out_weight[label]
        last = self.net.layers[-1]
        h, a = acts.post[-1][0], acts.pre[-1][0]
        wrong = (h != np.sign(g)) & (g != 0) & (self.bounds[-1].fixed == 0)
        need = _changes_needed(a, last.threshold, h)
        return (f, -float(np.sum(np.abs(g[wrong]) * need[wrong]))), target

    # ------------------------------------------------------------------ one iteration
    def propose(self, x: np.ndarray, target: int, S: int, deadline: float) -> np.ndarray | None:
        """One backward pass of target propagation from input ``x``; the new input or None."""
        net, label = self.net, self.tracker.label
        acts = net.forward(x)
        stages = net.threshold_stages
        k = len(stages) - 1
        g = net.out_weight[target] - net.out_weight[label]
        h, a = acts.post[k][0], acts.pre[k][0]
        free = self.bounds[k].fixed == 0
        reach = _reachable(a, stages[k].threshold, h, S) & free
        wrong = reach & (h != np.sign(g)) & (g != 0)
        if not wrong.any():
            return None
        targets = self._sample(np.flatnonzero(wrong), np.abs(g[wrong]), S)
        keep = reach & (h == np.sign(g)) & (g != 0)
        weights = np.zeros(len(h))
        weights[targets] = np.abs(g[targets])
        weights[keep] = np.abs(g[keep])
        desired = np.where(g >= 0, 1.0, -1.0)
        hard = None  # at the top every reachable unit is soft, weighted by its share of f
        while True:
            problem = self.layers.get(k)
            if problem is None:
                return None
            prev_on = self._inputs_now(x, acts, k, problem)
            movable = self._movable(problem, prev_on, h, weights, desired, S) & self._flippable_inputs(x, acts, k, S)
            new = self._solver_for(k).solve(prev_on, h, weights, desired, S, self._sub_limit(deadline), movable, hard)
            if new is None:
                return None
            if problem.kind == "pixels":
                return self._pixels(x, problem, new)
            changed = new != prev_on
            if not changed.any():
                return None
            idx = problem.inputs[changed]
            k -= 1
            if self.has_ib and k == 0:
                return self._bits(x, acts, idx, new[changed])
            h, a = acts.post[k][0], acts.pre[k][0]
            desired = h.astype(np.float64).copy()
            desired[idx] = 2 * new[changed] - 1
            weights = np.zeros(len(h))
            if self.layers.get(k) is not None and self.layers[k].kind == "binary":
                hard = None  # kept units are soft: a target may cost up to 1/_SOFT_KEEP of them
                weights[:] = _SOFT_KEEP
            else:  # the input LP holds every non-target unit where it is
                hard = np.ones(len(h), bool)
                hard[idx] = False
            weights[idx] = 1.0

    def _solver_for(self, k: int):
        if k in self.solvers:
            return self.solvers[k]
        # Rebuilt from the network, as an implementation without in-place updates would.
        data = layer_data(self.net, k, self.box, self.bounds, self.base, self.margin)
        return layer_solver(data, *self.solver_options)

    def _movable(self, problem: LayerData, inp: np.ndarray, h: np.ndarray, weights: np.ndarray,
                 desired: np.ndarray, S: int) -> np.ndarray:
        """The inputs the subproblem may move: those whose best move pushes the targets most.

        A target wants its pre-activation to rise if it should end on and to fall otherwise.  An
        input's move (a flip; a pixel step up or down) scores the weight of targets it pushes the
        right way minus those it pushes the wrong way; collateral on kept units is left to the
        MILP, which weighs it exactly for the inputs chosen here.
        """
        units = np.flatnonzero(weights > 0)
        up = np.where(desired[units] > 0, 1.0, -1.0)
        target = (desired[units] > 0) != (h[units] > 0)
        w = weights[units]
        C = problem.coef[units]
        if problem.kind == "binary":
            moves = [C * (1.0 - 2.0 * inp)[None, :]]
            room = [np.ones(len(inp), bool)]
        else:
            moves = [C, -C]
            room = [inp < problem.in_upper, inp > problem.in_lower]
        scores = []
        for move, ok in zip(moves, room, strict=True):
            push = up[:, None] * np.sign(move)
            gain = (w * target) @ push
            scores.append(np.where(ok, gain, -np.inf))
        score = np.max(scores, axis=0) + self.rng.random(len(inp)) * 1e-3
        if problem.kind == "pixels":  # an L∞ attack needs many pixels: every helpful one may move
            return score > 0
        movable = np.zeros(len(inp), bool)
        movable[np.argsort(-score)[: max(12, 4 * S)]] = True
        return movable & (score > 0)

    def _flippable_inputs(self, x: np.ndarray, acts, k: int, S: int) -> np.ndarray:
        """For the problem at stage ``k``: which of its inputs the stage below can flip at all."""
        problem, below = self.layers[k], self.layers.get(k - 1)
        if problem.kind == "pixels" or below is None:
            return np.ones(len(problem.inputs), bool)
        h_below = acts.post[k - 1][0]
        inp_below = self._inputs_now(x, acts, k - 1, below)
        return below.flippable(inp_below, h_below, S)[problem.inputs]

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

    def _bits(self, x: np.ndarray, acts, bits: np.ndarray, on: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[bits] = pixels_with_bits(self.net, self.box, x, bits, on > 0.5)
        return out

    def _sample(self, candidates: np.ndarray, weight: np.ndarray, S: int) -> np.ndarray:
        if len(candidates) <= S:
            return candidates
        return self.rng.choice(candidates, size=S, replace=False, p=weight / weight.sum())

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
        best, target = self.score(x, fixed_target)
        step, failures = 2, 0
        while time.perf_counter() < deadline and tracker.flip is None:
            if max_iterations is not None and self.iterations >= max_iterations:
                break
            self.iterations += 1
            candidate = self.propose(x, target, _STEPS[step], deadline)
            if candidate is not None:
                tracker.offer(candidate)
                score, new_target = self.score(candidate, fixed_target)
                if score > best and not np.array_equal(candidate, x):
                    x, best, target, failures = candidate, score, new_target, 0
                    self.accepted += 1
                    continue
            failures += 1
            step = int(np.clip(step + self.rng.choice([-1, 1]), 0, len(_STEPS) - 1))
            if failures >= _PATIENCE:
                self.restarts += 1
                x = self._restart_point(tracker.x_best)
                tracker.offer(x)  # a random restart may flip the prediction by itself
                (best, target), failures, step = self.score(x, fixed_target), 0, 2

    def _restart_point(self, x_best: np.ndarray) -> np.ndarray:
        """The best input so far with a random tenth of its free pixels moved inside the box."""
        x = x_best.copy()
        movable = np.flatnonzero(self.box.open)
        if len(movable) == 0:
            return x
        pick = self.rng.choice(movable, size=max(1, len(movable) // 10), replace=False)
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
    reuse: bool = True,
    threads: int | None = None,
    sub_time_limit: float = 0.3,
    mip_gap: float = 0.05,
    max_iterations: int | None = None,
    progress: Progress = NO_PROGRESS,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with IProp (see the module docstring).

    ``start`` is an input in the box to start from (PGD's best for ``iprop+pgd``; default the
    clean input).  ``reuse=False`` rebuilds every layer-local MILP at every solve (to measure what
    in-place updates save).  IProp never claims 'robust'.  ``progress`` (True, a callable or a
    :class:`~bnnmip.progress.Progress`) hears the best objective as it improves; quiet by default.
    """
    deadline = Deadline.start(time_limit)
    xf = check_input(net, x)
    box = input_box(net, xf, eps, levels)
    progress.update(stage="IProp")
    tracker = Tracker(net, xf, float(eps), box, target, t0=deadline.t0, progress=progress)
    x0 = xf if start is None else check_input(net, start)
    if start is not None:
        tracker.offer(box.snap(x0))
    state = _IProp(net, tracker, box, backend, reuse, threads, np.random.default_rng(seed), sub_time_limit,
                   mip_gap)
    state.run(x0, deadline.end, max_iterations)
    details = {"iterations": state.iterations, "accepted": state.accepted, "restarts": state.restarts}
    return tracker.result("iprop", backend, details=details)
