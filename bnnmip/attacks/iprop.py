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
   maximises the true change of :math:`f` over the units it can reach).  The units of
   :math:`h_{l-1}` that change become the targets of the layer below;
3. **at the input**: solves the same program over the perturbation (grid steps or continuous
   values in the box; with input binarization, over the free input bits, then picks pixels);
4. runs the exact forward pass and keeps the new input if :math:`(f, -\mathrm{potential})`
   improves, where the potential sums :math:`|g_j|` times the input changes each disagreeing
   top unit still needs (so plateau moves that bring flips closer are kept).  The step size
   :math:`S` adapts; after many failures IProp restarts (and, untargeted, moves to the next class).

Every layer-local MILP is built once per attack and then updated in place (objective, column and
row bounds, the change-budget row) through a backend session; ``reuse=False`` rebuilds it every
time instead (for measurement).  Only units that can actually move keep their rows active, so
each solve is small.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..bounds import LayerBounds, check_input, input_box, interval_bounds_from_box
from ..milp.formulation import ModelBuilder, binary_layer_rows, first_layer_rows, pixels_with_bits, snap_to_box
from ..milp.model import check_time_limit
from ..milp.session import open_session
from ..network import BNN
from .result import AttackResult, Tracker

_STEPS = (1, 2, 3, 5, 8, 13, 21, 34)
_TARGET_WEIGHT = 1.0
_ROUNDING_SIGMAS = 3.0


@dataclass
class _Problem:
    """One layer-local MILP: free inputs of a stage -> all units of the stage, kept in a session.

    Unit ``j`` has ``s_j = coef[j] @ inputs`` and the exact rows of the attack MILP.  Before each
    solve, only the *movable* inputs keep their range (the others are fixed where they are), and a
    unit is *active* (rows on, binary free) only if it has a weight and the movable inputs can
    carry it across its threshold.  The big-M coefficients are rewritten from the range the
    movable inputs (and, for ±1 inputs, the change budget ``S``) allow, so the relaxation stays
    tight: M of order S instead of the fan-in.
    """

    session: object
    inputs: np.ndarray  # index (bit, unit or pixel) of each input column
    in_lower: np.ndarray  # column bounds of the inputs (bits: 0/1; pixels: grid steps or values)
    in_upper: np.ndarray
    coef: np.ndarray  # (m, n_inputs)
    theta: np.ndarray
    delta: float
    margin: float
    unit_cols: np.ndarray
    on_row: np.ndarray
    off_row: np.ndarray
    box_fixed: np.ndarray  # units the box fixes (never active)
    budget_row: int | None
    grid: bool
    kind: str  # "binary" (inputs are ±1 units) or "pixels"
    pixel_step: float = 1.0  # one grid step in the pixel columns' units
    budget_coef: np.ndarray | None = None

    def solve(self, inp: np.ndarray, h: np.ndarray, weights: np.ndarray, desired: np.ndarray, S: int,
              time_limit: float, movable: np.ndarray, hard: np.ndarray | None = None) -> np.ndarray | None:
        """New values of the input columns, or None if there is nothing to solve or no solution.

        Units with a weight are soft (the objective rewards ending at ``desired``); ``hard`` units
        must keep their current value (rows without a free binary: plain linear constraints).
        """
        lo, hi, L, U = self.ranges(inp, S, movable)
        reachable = (U >= self.theta + self.margin) & (L <= self.theta - self.delta) & ~self.box_fixed
        soft = (weights > 0) & reachable
        hard = reachable & ~soft & (hard if hard is not None else False)
        if not soft.any():
            return None
        s, n = self.session, len(self.inputs)
        on = (h > 0).astype(np.float64)
        rows = soft | hard
        # The rows' margins, never more than the current point keeps (so it stays feasible).
        s0 = self.coef @ inp
        on_side = np.where(on > 0, np.minimum(self.theta + self.margin, s0), self.theta + self.margin)
        off_side = np.where(on > 0, self.theta - self.delta, np.maximum(self.theta - self.delta, s0))
        s.set_col_bounds(np.arange(n), lo, hi)
        s.set_col_bounds(self.unit_cols, np.where(soft, 0.0, on), np.where(soft, 1.0, on))
        if self.budget_row is not None:
            self._set_budget(inp, S)
        s.set_row_bounds(self.on_row, np.where(rows, L, -np.inf), np.full(len(L), np.inf))
        s.set_row_bounds(self.off_row, np.full(len(L), -np.inf), np.where(rows, off_side, np.inf))
        j = np.flatnonzero(rows)
        s.set_entries(np.concatenate([self.on_row[j], self.off_row[j]]),
                      np.concatenate([self.unit_cols[j], self.unit_cols[j]]),
                      np.concatenate([L[j] - on_side[j], -(U[j] - off_side[j])]))
        s.set_objective(self.unit_cols, np.where(soft, weights * desired, 0.0))
        sol = s.solve(time_limit=max(time_limit, 0.01), start=np.concatenate([inp, on]))
        if not sol.has_solution:
            return None
        values = np.clip(sol.values[:n], lo, hi)
        return np.rint(values) if (self.kind == "binary" or self.grid) else values

    def ranges(self, inp: np.ndarray, S: int, movable: np.ndarray | None = None):
        """(input lower, input upper, L, U): the range of every unit's ``s`` when the movable
        inputs (default all) go anywhere in their bounds, within the step ``S``: at most S of the
        ±1 inputs change, or each pixel moves at most S grid steps."""
        lo = self.in_lower if movable is None else np.where(movable, self.in_lower, inp)
        hi = self.in_upper if movable is None else np.where(movable, self.in_upper, inp)
        if self.kind == "pixels":  # a trust region: S grid steps (or 255ths of the range) per pixel
            lo, hi = np.maximum(lo, inp - S * self.pixel_step), np.minimum(hi, inp + S * self.pixel_step)
        s0 = self.coef @ inp
        pos, neg = np.maximum(self.coef, 0), np.minimum(self.coef, 0)
        L = s0 + pos @ (lo - inp) + neg @ (hi - inp)
        U = s0 + pos @ (hi - inp) + neg @ (lo - inp)
        if self.budget_row is not None:
            L, U = np.maximum(L, s0 - S), np.minimum(U, s0 + S)
        return lo, hi, L, U

    def flippable(self, inp: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
        """Units this layer's inputs can flip, one at a time, from the current point."""
        _, _, L, U = self.ranges(inp, S)
        return np.where(h > 0, L <= self.theta - self.delta, U >= self.theta + self.margin) & ~self.box_fixed

    def _set_budget(self, inp: np.ndarray, S: int) -> None:
        """At most S inputs change: sum over inputs at 0 of b - sum over inputs at 1 of b <= S - #ones."""
        coef = 1.0 - 2.0 * inp
        changed = np.arange(len(coef)) if self.budget_coef is None else np.flatnonzero(coef != self.budget_coef)
        if len(changed):
            self.session.set_entries(np.full(len(changed), self.budget_row), changed, coef[changed])
            self.budget_coef = coef
        self.session.set_row_bounds([self.budget_row], [-np.inf], [S - inp.sum()])


def _build_problem(net: BNN, k: int, box, bounds: list[LayerBounds], base, backend, reuse, threads,
                   margin: float, mip_gap: float) -> _Problem:
    stage = net.threshold_stages[k]
    bnd = bounds[k]
    m = len(stage.threshold)
    units = np.arange(m)
    b = ModelBuilder()
    if k == 0:  # a real-valued first layer over the pixels
        pixels = np.flatnonzero(box.upper > box.lower)
        grid = box.step is not None and stage.binary_weights
        if grid:
            in_lower, in_upper = box.k_lower[pixels].astype(np.float64), box.k_upper[pixels].astype(np.float64)
        else:
            in_lower, in_upper = box.lower[pixels], box.upper[pixels]
        # Pixels are continuous in the subproblem, rounded to the grid afterwards: HiGHS handles
        # hundreds of continuous columns far faster than general integers.  Rows keep a margin of
        # a few rounding errors (each pixel moves by at most half a step when rounded).
        b.add_columns(in_lower, in_upper, False, -1, pixels)
        rows = first_layer_rows(net, stage, bnd, units, box, base, pixels, grid, margin)
        if grid:
            slack = _ROUNDING_SIGMAS * 0.5 * np.sqrt(len(pixels) / 3.0)
            rows["margin"], rows["delta"] = slack, rows["delta"] + slack
        inputs, in_cols, kind = pixels, np.arange(len(pixels)), "pixels"
    else:
        prev = bounds[k - 1]
        inputs = np.flatnonzero(prev.fixed == 0)
        prev_cols = np.full(len(prev.fixed), -1)
        in_lower, in_upper = np.zeros(len(inputs)), np.ones(len(inputs))
        prev_cols[inputs] = b.add_columns(in_lower, in_upper, True, k - 1, inputs)
        rows = binary_layer_rows(stage, bnd, units, prev, prev_cols)
        in_cols, grid, kind = rows.pop("in_cols"), True, "binary"
    unit_cols = b.add_columns(np.zeros(m), np.ones(m), True, k, units)
    b.add_unit_rows(f"l{k}", units, rows["coef"], in_cols, unit_cols, rows["L"], rows["U"], rows["theta"],
                    rows["delta"], rows["margin"])
    budget_row = b.add_row(in_cols, np.ones(len(in_cols)), -np.inf, np.inf, "budget") if kind == "binary" else None
    model = b.model(np.zeros(b.n_cols), 0.0, tuple(f"s{i}" for i in range(len(net.threshold_stages))), f"iprop_{k}")
    session = open_session(model, backend, reuse=reuse, threads=threads, mip_gap=mip_gap)
    pixel_step = 1.0 if grid else (net.input_range[1] - net.input_range[0]) / 255
    return _Problem(session, inputs, in_lower, in_upper, np.asarray(rows["coef"], np.float64),
                    np.asarray(rows["theta"], np.float64), float(rows["delta"]), float(rows["margin"]), unit_cols,
                    units, units + m, bnd.fixed != 0, budget_row, grid, kind, pixel_step)


def _reachable(a: np.ndarray, theta: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
    """Units of a ±1 layer that ``S`` input changes (each moving ``a`` by 2) can flip."""
    return np.where(h > 0, a - 2 * S <= theta - 2, a + 2 * S >= theta)


def _changes_needed(a: np.ndarray, theta: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.where(h > 0, np.floor((a - theta) / 2) + 1, np.ceil((theta - a) / 2))


class _IProp:
    """The state of one IProp run on one input (see the module docstring)."""

    def __init__(self, net: BNN, tracker: Tracker, box, backend: str, reuse: bool, threads, rng, sub_time_limit,
                 mip_gap: float):
        self.net, self.tracker, self.box, self.rng = net, tracker, box, rng
        self.base = snap_to_box(net, tracker.x, box)
        self.bounds = interval_bounds_from_box(net, box)
        self.has_ib = net.input_binarization is not None
        self.sub_time_limit = sub_time_limit
        margin = 1e-6 * (1.0 + float(np.abs(net.layers[0].threshold).max(initial=0.0)))
        first = 1 if self.has_ib else 0
        self.problems = {
            k: _build_problem(net, k, box, self.bounds, self.base, backend, reuse, threads, margin, mip_gap)
            for k in range(first, len(net.threshold_stages))
            if np.any(self.bounds[k].fixed == 0) and (k == 0 or np.any(self.bounds[k - 1].fixed == 0))
        }
        self.iterations = self.accepted = self.restarts = 0

    # ------------------------------------------------------------------ scoring
    def score(self, x: np.ndarray, target: int) -> tuple[float, float]:
        """(f, -potential) of an input for one target class."""
        acts = self.net.forward(x)
        label = self.tracker.label
        f = float(acts.logits[0, target] - acts.logits[0, label])
        g = self.net.out_weight[target] - self.net.out_weight[label]
        last = self.net.layers[-1]
        h, a = acts.post[-1][0], acts.pre[-1][0]
        wrong = (h != np.sign(g)) & (g != 0) & (self.bounds[-1].fixed == 0)
        need = _changes_needed(a, last.threshold, h)
        return f, -float(np.sum(np.abs(g[wrong]) * need[wrong]))

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
            problem = self.problems.get(k)
            if problem is None:
                return None
            prev_on = self._inputs_now(x, acts, k, problem)
            movable = self._movable(problem, prev_on, h, weights, desired, S) & self._flippable_inputs(x, acts, k, S)
            new = problem.solve(prev_on, h, weights, desired, S, self._sub_limit(deadline), movable, hard)
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
            hard = np.ones(len(h), bool)  # below the top, every non-target unit keeps its value
            hard[idx] = False
            weights = np.zeros(len(h))
            weights[idx] = _TARGET_WEIGHT

    def _movable(self, problem: _Problem, inp: np.ndarray, h: np.ndarray, weights: np.ndarray,
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
        for move, ok in zip(moves, room):
            push = up[:, None] * np.sign(move)
            gain = (w * target) @ push
            scores.append(np.where(ok, gain, -np.inf))
        score = np.max(scores, axis=0) + self.rng.random(len(inp)) * 1e-3
        count = max(12, 4 * S) if problem.kind == "binary" else len(inp)
        movable = np.zeros(len(inp), bool)
        movable[np.argsort(-score)[:count]] = True
        return movable & (score > 0)

    def _flippable_inputs(self, x: np.ndarray, acts, k: int, S: int) -> np.ndarray:
        """For the problem at stage ``k``: which of its inputs the stage below can flip at all."""
        problem, below = self.problems[k], self.problems.get(k - 1)
        if problem.kind == "pixels" or below is None:
            return np.ones(len(problem.inputs), bool)
        h_below = acts.post[k - 1][0]
        inp_below = self._inputs_now(x, acts, k - 1, below)
        return below.flippable(inp_below, h_below, S)[problem.inputs]

    def _inputs_now(self, x: np.ndarray, acts, k: int, problem: _Problem) -> np.ndarray:
        """Current values of a problem's input columns: bits 0/1, grid steps or pixel values."""
        if problem.kind == "binary":
            return (acts.post[k - 1][0][problem.inputs] > 0).astype(np.float64)
        if problem.grid:
            return np.rint((x[problem.inputs] - self.net.input_range[0]) / self.box.step)
        return x[problem.inputs]

    def _pixels(self, x: np.ndarray, problem: _Problem, values: np.ndarray) -> np.ndarray:
        out = x.copy()
        if problem.grid:
            out[problem.inputs] = self.net.input_range[0] + values * self.box.step
        else:
            out[problem.inputs] = np.clip(values, self.box.lower[problem.inputs], self.box.upper[problem.inputs])
        return out

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
        tracker = self.tracker
        target_order = list(tracker.targets)
        t_index = 0
        target = target_order[t_index]
        x = snap_to_box(self.net, x0, self.box)
        best = self.score(x, target)
        step, failures = 2, 0
        while time.perf_counter() < deadline and tracker.flip is None:
            if max_iterations is not None and self.iterations >= max_iterations:
                break
            self.iterations += 1
            S = _STEPS[step]
            candidate = self.propose(x, target, S, deadline)
            if candidate is not None:
                tracker.offer(candidate)
                score = self.score(candidate, target)
                if score > best and not np.array_equal(candidate, x):
                    x, best, failures = candidate, score, 0
                    self.accepted += 1
                    continue
            failures += 1
            step = int(np.clip(step + self.rng.choice([-1, 1]), 0, len(_STEPS) - 1))
            if failures >= 4 * len(_STEPS):
                self.restarts += 1
                if len(target_order) > 1:
                    t_index = (t_index + 1) % len(target_order)
                    target = target_order[t_index]
                x = self._restart_point(tracker.x_best)
                best, failures, step = self.score(x, target), 0, 2

    def _restart_point(self, x_best: np.ndarray) -> np.ndarray:
        """The best input so far with a random tenth of its free pixels moved inside the box."""
        x = x_best.copy()
        movable = np.flatnonzero(self.box.upper > self.box.lower)
        if len(movable) == 0:
            return x
        pick = self.rng.choice(movable, size=max(1, len(movable) // 10), replace=False)
        if self.box.step is not None:
            k = self.rng.integers(self.box.k_lower[pick], self.box.k_upper[pick] + 1)
            x[pick] = self.net.input_range[0] + k * self.box.step
        else:
            x[pick] = self.rng.uniform(self.box.lower[pick], self.box.upper[pick])
        return x


def iprop_attack(
    net: BNN,
    x,
    eps,
    *,
    target: int | None = None,
    time_limit: float = 60.0,
    backend: str = "highs",
    levels: int | None = None,
    start=None,
    seed: int = 0,
    reuse: bool = True,
    threads: int | None = None,
    sub_time_limit: float = 0.5,
    mip_gap: float = 1e-3,
    max_iterations: int | None = None,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with IProp (see the module docstring).

    ``start`` is an input in the box to start from (PGD's best for ``iprop+pgd``; default the
    clean input).  ``reuse=False`` rebuilds every layer-local MILP at every solve (to measure what
    in-place updates save).  IProp never claims 'robust'.
    """
    t0 = time.perf_counter()
    time_limit = check_time_limit(time_limit)
    xf = check_input(net, x)
    box = input_box(net, xf, eps, levels)
    tracker = Tracker(net, xf, float(eps), box, target, t0=t0)
    x0 = xf if start is None else check_input(net, start)
    if start is not None:
        tracker.offer(snap_to_box(net, x0, box))
    deadline = t0 + (time_limit if time_limit is not None else float("inf"))
    state = _IProp(net, tracker, box, backend, reuse, threads, np.random.default_rng(seed), sub_time_limit,
                   mip_gap)
    state.run(x0, deadline, max_iterations)
    details = {"iterations": state.iterations, "accepted": state.accepted, "restarts": state.restarts}
    return tracker.result("iprop", backend, details=details)
