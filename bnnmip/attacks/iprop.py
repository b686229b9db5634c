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
from dataclasses import dataclass

import numpy as np

from ..bounds import LayerBounds, check_input, input_box, interval_bounds_from_box
from ..milp.formulation import ModelBuilder, binary_layer_rows, first_layer_rows, pixels_with_bits, snap_to_box
from ..milp.model import check_time_limit
from ..milp.session import open_session
from ..network import BNN
from .result import AttackResult, Tracker

_STEPS = (1, 2, 3, 5, 8, 13)  # the step size S: ±1 input changes, or grid steps per pixel
_PATIENCE = 32  # failed proposals before a restart
_SOFT_KEEP = 0.5  # weight of kept units below the top (targets weigh 1)
_ROUNDING_SIGMAS = 3.0  # pixel rows keep this many standard deviations of the grid-rounding error


@dataclass(frozen=True, eq=False)
class _LayerData:
    """What a layer-local problem needs, fixed for one attack: unit ``j`` of stage ``k`` has
    ``s_j = coef[j] @ v`` over the input columns ``v`` (free ±1 inputs as 0/1, or pixels as grid
    steps / values), is on iff ``s_j >= theta_j`` (+ ``margin``) and off iff ``s_j <= theta_j - delta``."""

    k: int
    kind: str  # "binary" (inputs are ±1 units) or "pixels"
    inputs: np.ndarray  # index (bit, unit or pixel) of each input column
    in_lower: np.ndarray
    in_upper: np.ndarray
    coef: np.ndarray  # (m, n_inputs)
    theta: np.ndarray
    delta: float
    margin: float
    box_fixed: np.ndarray  # units the box fixes
    grid: bool  # input columns take integer values
    pixel_step: float  # one grid step in the pixel columns' units

    def ranges(self, inp: np.ndarray, S: int, movable: np.ndarray | None = None):
        """(input lower, input upper, L, U): the range of every unit's ``s`` when the movable
        inputs (default all) go anywhere in their bounds, within the step ``S``: at most S of the
        ±1 inputs change, or each pixel moves at most S grid steps (a trust region)."""
        lo = self.in_lower if movable is None else np.where(movable, self.in_lower, inp)
        hi = self.in_upper if movable is None else np.where(movable, self.in_upper, inp)
        if self.kind == "pixels":
            lo, hi = np.maximum(lo, inp - S * self.pixel_step), np.minimum(hi, inp + S * self.pixel_step)
        s0 = self.coef @ inp
        pos, neg = np.maximum(self.coef, 0), np.minimum(self.coef, 0)
        L = s0 + pos @ (lo - inp) + neg @ (hi - inp)
        U = s0 + pos @ (hi - inp) + neg @ (lo - inp)
        if self.kind == "binary":
            L, U = np.maximum(L, s0 - S), np.minimum(U, s0 + S)
        return lo, hi, L, U

    def reachable(self, L: np.ndarray, U: np.ndarray) -> np.ndarray:
        return (U >= self.theta + self.margin) & (L <= self.theta - self.delta) & ~self.box_fixed

    def flippable(self, inp: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
        """Units the inputs can flip, one at a time, from the current point."""
        _, _, L, U = self.ranges(inp, S)
        return np.where(h > 0, L <= self.theta - self.delta, U >= self.theta + self.margin) & ~self.box_fixed


def _layer_data(net: BNN, k: int, box, bounds: list[LayerBounds], base: np.ndarray, margin: float) -> _LayerData:
    stage = net.threshold_stages[k]
    units = np.arange(len(stage.threshold))
    if k == 0:  # a real-valued first layer over the pixels
        pixels = np.flatnonzero(box.upper > box.lower)
        grid = box.step is not None and stage.binary_weights
        if grid:
            lower, upper = box.k_lower[pixels].astype(np.float64), box.k_upper[pixels].astype(np.float64)
        else:
            lower, upper = box.lower[pixels], box.upper[pixels]
        rows = first_layer_rows(net, stage, bounds[0], units, box, base, pixels, grid, margin)
        if grid:  # pixels are solved continuous and rounded: keep a margin of a few rounding errors
            slack = _ROUNDING_SIGMAS * 0.5 * np.sqrt(len(pixels) / 3.0)
            rows["margin"], rows["delta"] = slack, rows["delta"] + slack
        step = 1.0 if grid else (net.input_range[1] - net.input_range[0]) / 255
        # A constant unit (gamma = 0) has an infinite threshold: put it just out of reach instead,
        # so every coefficient of the subproblem stays finite.
        theta = np.asarray(rows["theta"], np.float64)
        theta = np.where(np.isfinite(theta), theta, np.where(theta > 0, rows["U"] + 1.0, rows["L"] - 1.0))
        return _LayerData(k, "pixels", pixels, lower, upper, np.asarray(rows["coef"], np.float64), theta,
                          float(rows["delta"]), float(rows["margin"]),
                          bounds[k].fixed != 0, grid, step)
    prev = bounds[k - 1]
    inputs = np.flatnonzero(prev.fixed == 0)
    cols = np.full(len(prev.fixed), -1)
    cols[inputs] = np.arange(len(inputs))
    rows = binary_layer_rows(stage, bounds[k], units, prev, cols)
    return _LayerData(k, "binary", inputs, np.zeros(len(inputs)), np.ones(len(inputs)),
                      np.asarray(rows["coef"], np.float64), np.asarray(rows["theta"], np.float64),
                      float(rows["delta"]), 0.0, bounds[k].fixed != 0, True, 1.0)


def _set_budget(session, row: int, inp: np.ndarray, S: int, previous: np.ndarray | None) -> np.ndarray:
    """At most S of the 0/1 inputs change: sum(b over inputs at 0) - sum(b over inputs at 1) <= S - #ones.

    Only coefficients whose input changed since ``previous`` are rewritten; returns the new ones."""
    coef = 1.0 - 2.0 * inp
    changed = np.arange(len(coef)) if previous is None else np.flatnonzero(coef != previous)
    if len(changed):
        session.set_entries(np.full(len(changed), row), changed, coef[changed])
    session.set_row_bounds([row], [-np.inf], [S - inp.sum()])
    return coef


class _BinaryMilp:
    """The layer-local MILP over ±1 inputs (DESIGN.md §7 step 3).

    Columns: the free inputs (binaries) and one binary per unit; rows: the exact big-M rows of
    every unit and the change budget.  Before each solve only *soft* units (with a weight: the
    objective rewards ending at ``desired``) and *hard* units (must keep their value) that the
    movable inputs can reach keep their rows; the others are freed.  The big-M coefficients are
    rewritten from the range the movable inputs and the budget allow (M of order S, not the
    fan-in), so the relaxation stays tight.
    """

    def __init__(self, data: _LayerData, backend: str, reuse: bool, threads, mip_gap: float):
        n, m = len(data.inputs), len(data.theta)
        b = ModelBuilder()
        in_cols = b.add_columns(data.in_lower, data.in_upper, True, data.k - 1, data.inputs)
        self.unit_cols = b.add_columns(np.zeros(m), np.ones(m), True, data.k, np.arange(m))
        b.add_unit_rows(f"l{data.k}", np.arange(m), data.coef, in_cols, self.unit_cols, data.theta - n,
                        data.theta + n, data.theta, data.delta, 0.0)
        self.on_row, self.off_row = np.arange(m), np.arange(m, 2 * m)
        self.budget_row = b.add_row(in_cols, np.ones(n), -np.inf, np.inf, "budget")
        model = b.model(np.zeros(b.n_cols), 0.0, (), f"iprop_layer_{data.k}")
        self.data = data
        self.session = open_session(model, backend, reuse=reuse, threads=threads, mip_gap=mip_gap)
        self.budget = None

    def solve(self, inp, h, weights, desired, S, time_limit, movable, hard=None) -> np.ndarray | None:
        """New values of the input columns, or None if there is nothing to solve or no solution."""
        d, s = self.data, self.session
        lo, hi, L, U = d.ranges(inp, S, movable)
        reachable = d.reachable(L, U)
        soft = (weights > 0) & reachable
        if not soft.any():
            return None
        rows = soft | (reachable & (hard if hard is not None else False))
        on = (h > 0).astype(np.float64)
        # Each row's margin never asks more than the current point has, so it stays feasible.
        s0 = d.coef @ inp
        on_side = np.where(on > 0, np.minimum(d.theta + d.margin, s0), d.theta + d.margin)
        off_side = np.where(on > 0, d.theta - d.delta, np.maximum(d.theta - d.delta, s0))
        s.set_col_bounds(np.arange(len(inp)), lo, hi)
        s.set_col_bounds(self.unit_cols, np.where(soft, 0.0, on), np.where(soft, 1.0, on))
        self.budget = _set_budget(s, self.budget_row, inp, S, self.budget)
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
        return np.rint(np.clip(sol.values[: len(inp)], lo, hi))


class _InputLp:
    """The input layer as a linear program: maximise the targets' capped, normalised progress.

    With ``z_j = s_j`` (unit j's pre-activation over the pixel columns), progress columns
    ``t_j <= ±(z_j - s0_j)`` capped at the distance to the far side of the threshold, and the
    objective ``sum_j w_j t_j / cap_j``, a target counts fully once it crosses and partly as it
    gets closer (a MAX-SAT surrogate that also rewards progress); held units are bounds on ``z``.
    Pixels are continuous and rounded to the grid afterwards (the rows keep a margin for that).
    Only bounds, right-hand sides and costs change between solves, so the dual simplex restarts
    from the previous basis: far faster than a MILP over hundreds of pixels.
    """

    def __init__(self, data: _LayerData, backend: str, reuse: bool, threads):
        m = len(data.theta)
        units, inf = np.arange(m), np.full(m, np.inf)
        b = ModelBuilder()
        b.add_columns(data.in_lower, data.in_upper, False, -1, data.inputs)
        self.z = b.add_columns(-inf, inf, False, 0, units)
        self.up = b.add_columns(-inf, inf, False, 0, units)
        self.down = b.add_columns(-inf, inf, False, 0, units)
        rows, cols = np.nonzero(data.coef)
        b.add_block(np.concatenate([rows, units]), np.concatenate([cols, self.z]),
                    np.concatenate([-data.coef[rows, cols], np.ones(m)]), np.zeros(m), np.zeros(m), "z")
        pairs = np.repeat(units, 2)
        self.up_rows = b.add_block(pairs, np.ravel(np.column_stack([self.up, self.z])), np.tile([1.0, -1.0], m),
                                   -inf, np.zeros(m), "up")
        self.down_rows = b.add_block(pairs, np.ravel(np.column_stack([self.down, self.z])), np.ones(2 * m),
                                     -inf, np.zeros(m), "down")
        model = b.model(np.zeros(b.n_cols), 0.0, (), "iprop_input")
        self.data = data
        self.session = open_session(model, backend, reuse=reuse, threads=threads)

    def solve(self, inp, h, weights, desired, S, time_limit, movable, hard=None) -> np.ndarray | None:
        d, s = self.data, self.session
        lo, hi, L, U = d.ranges(inp, S, movable)
        s0, on, m, inf = d.coef @ inp, h > 0, len(d.theta), np.inf
        reachable = d.reachable(L, U)
        target = (weights > 0) & reachable & ((desired > 0) != on)
        if not target.any():
            return None
        held = reachable & ~target & ((hard if hard is not None else False) | (weights > 0))
        cap = np.where(on, s0 - (d.theta - d.delta), d.theta + d.margin - s0)
        up, down = target & ~on, target & on
        s.set_col_bounds(np.arange(len(inp)), lo, hi)
        s.set_col_bounds(self.z, np.where(held & on, np.minimum(d.theta + d.margin, s0), -inf),
                         np.where(held & ~on, np.maximum(d.theta - d.delta, s0), inf))
        s.set_col_bounds(self.up, np.full(m, -inf), np.where(up, cap, inf))
        s.set_col_bounds(self.down, np.full(m, -inf), np.where(down, cap, inf))
        s.set_row_bounds(self.up_rows, np.full(m, -inf), -s0)
        s.set_row_bounds(self.down_rows, np.full(m, -inf), s0)
        gain = np.divide(weights, cap, out=np.zeros(m), where=cap > 0)
        s.set_objective(self.up, np.where(up, gain, 0.0))
        s.set_objective(self.down, np.where(down, gain, 0.0))
        sol = s.solve(time_limit=max(time_limit, 0.01))
        if not sol.has_solution:
            return None
        values = np.clip(sol.values[: len(inp)], lo, hi)
        return np.rint(values) if d.grid else values


def _solver(data: _LayerData, backend: str, reuse: bool, threads, mip_gap: float):
    if data.kind == "pixels":
        return _InputLp(data, backend, reuse, threads)
    return _BinaryMilp(data, backend, reuse, threads, mip_gap)


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
        self.base = snap_to_box(net, tracker.x, box)
        self.bounds = interval_bounds_from_box(net, box)
        self.has_ib = net.input_binarization is not None
        self.sub_time_limit = sub_time_limit
        finite = np.abs(net.layers[0].threshold[np.isfinite(net.layers[0].threshold)])
        self.margin = margin = 1e-6 * (1.0 + float(finite.max(initial=0.0)))
        first = 1 if self.has_ib else 0
        self.layers = {
            k: _layer_data(net, k, box, self.bounds, self.base, margin)
            for k in range(first, len(net.threshold_stages))
            if np.any(self.bounds[k].fixed == 0) and (k == 0 or np.any(self.bounds[k - 1].fixed == 0))
        }
        self.solver_options = (backend, reuse, threads, mip_gap)
        self.solvers = {k: _solver(d, *self.solver_options) for k, d in self.layers.items()} if reuse else {}
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
        data = _layer_data(self.net, k, self.box, self.bounds, self.base, self.margin)
        return _solver(data, *self.solver_options)

    def _movable(self, problem: _LayerData, inp: np.ndarray, h: np.ndarray, weights: np.ndarray,
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

    def _inputs_now(self, x: np.ndarray, acts, k: int, problem: _LayerData) -> np.ndarray:
        """Current values of a problem's input columns: bits 0/1, grid steps or pixel values."""
        if problem.kind == "binary":
            return (acts.post[k - 1][0][problem.inputs] > 0).astype(np.float64)
        if problem.grid:
            return np.rint((x[problem.inputs] - self.net.input_range[0]) / self.box.step)
        return x[problem.inputs]

    def _pixels(self, x: np.ndarray, problem: _LayerData, values: np.ndarray) -> np.ndarray:
        out = x.copy()
        if problem.grid:
            out[problem.inputs] = self.net.input_range[0] + values * self.box.step
            return out
        out[problem.inputs] = values
        # Real first-layer weights on a grid: the columns are values, so snap them to the grid.
        return snap_to_box(self.net, out, self.box)

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
        x = snap_to_box(self.net, x0, self.box)
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
    sub_time_limit: float = 0.3,
    mip_gap: float = 0.05,
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
