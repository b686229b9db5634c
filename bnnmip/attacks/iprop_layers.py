r"""IProp's layer-local problems: one small model per stage, built once and updated in place.

:class:`LayerData` says what a stage's units need from their inputs; :class:`BinaryMilp` is the
MILP over a ±1 layer's inputs (DESIGN.md §7 step 3) and :class:`InputLp` the linear program over
the pixels (step 4).  Both live in a backend session (:func:`bnnmip.backends.open_session`), so
each solve changes bounds, costs and a few coefficients instead of rebuilding the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ..backends import open_session
from ..bounds import LayerBounds
from ..box import InputBox
from ..errors import InvalidArgumentError
from ..milp.backend import get_backend
from ..milp.builder import ModelBuilder, UnitRows
from ..milp.rows import binary_layer_rows, first_layer_rows
from ..network import BNN

_ROUNDING_SIGMAS = 3.0  # pixel rows keep this many standard deviations of the grid-rounding error


@dataclass(frozen=True, eq=False)
class LayerData:
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
        pos, neg = self._signed_parts
        L = s0 + pos @ (lo - inp) + neg @ (hi - inp)
        U = s0 + pos @ (hi - inp) + neg @ (lo - inp)
        if self.kind == "binary":
            L, U = np.maximum(L, s0 - S), np.minimum(U, s0 + S)
        return lo, hi, L, U

    @cached_property
    def _signed_parts(self) -> tuple[np.ndarray, np.ndarray]:
        return np.maximum(self.coef, 0), np.minimum(self.coef, 0)

    def reachable(self, L: np.ndarray, U: np.ndarray) -> np.ndarray:
        return (U >= self.theta + self.margin) & (L <= self.theta - self.delta) & ~self.box_fixed

    def flippable(self, inp: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
        """Units the inputs can flip, one at a time, from the current point."""
        _, _, L, U = self.ranges(inp, S)
        return np.where(h > 0, L <= self.theta - self.delta, U >= self.theta + self.margin) & ~self.box_fixed


def layer_data(net: BNN, k: int, box: InputBox, bounds: list[LayerBounds], base: np.ndarray,
               margin: float, rounded: bool = True) -> LayerData:
    """The :class:`LayerData` of stage ``k`` over the box (``base``: the clean input snapped into it).

    ``rounded``: grid pixels are solved continuous and rounded afterwards (by a backend LP), so
    their rows keep a margin of a few rounding errors; False when the solver stays on the grid."""
    stage = net.threshold_stages[k]
    units = np.arange(len(stage.threshold))
    if k == 0:  # a real-valued first layer over the pixels
        return _pixel_layer(net, stage, box, bounds, base, margin, units, rounded)
    prev = bounds[k - 1]
    inputs = np.flatnonzero(prev.fixed == 0)
    cols = np.full(len(prev.fixed), -1)
    cols[inputs] = np.arange(len(inputs))
    rows = binary_layer_rows(stage, bounds[k], units, prev, cols)
    return LayerData(k, "binary", inputs, np.zeros(len(inputs)), np.ones(len(inputs)),
                     np.asarray(rows.coef, np.float64), np.asarray(rows.theta, np.float64),
                     float(rows.delta), 0.0, bounds[k].fixed != 0, True, 1.0)


def _pixel_layer(net: BNN, stage, box: InputBox, bounds: list[LayerBounds], base: np.ndarray, margin: float,
                 units: np.ndarray, rounded: bool) -> LayerData:
    pixels = np.flatnonzero(box.open)
    grid = box.on_grid and stage.binary_weights
    if grid:
        lower, upper = box.k_lower[pixels].astype(np.float64), box.k_upper[pixels].astype(np.float64)
    else:
        lower, upper = box.lower[pixels], box.upper[pixels]
    rows = first_layer_rows(net, stage, bounds[0], units, box, base, pixels, grid, margin)
    if grid and rounded:  # pixels are solved continuous and rounded: keep a margin of a few rounding errors
        slack = _ROUNDING_SIGMAS * 0.5 * np.sqrt(len(pixels) / 3.0)
        rows = replace(rows, margin=slack, delta=rows.delta + slack)
    step = 1.0 if grid else (net.input_range[1] - net.input_range[0]) / 255
    # A constant unit (gamma = 0) has an infinite threshold: put it just out of reach instead,
    # so every coefficient of the subproblem stays finite.
    theta = np.asarray(rows.theta, np.float64)
    theta = np.where(np.isfinite(theta), theta, np.where(theta > 0, rows.U + 1.0, rows.L - 1.0))
    return LayerData(0, "pixels", pixels, lower, upper, np.asarray(rows.coef, np.float64), theta,
                     float(rows.delta), float(rows.margin), bounds[0].fixed != 0, grid, step)


def _set_budget(session, row: int, inp: np.ndarray, S: int, previous: np.ndarray | None) -> np.ndarray:
    """At most S of the 0/1 inputs change: sum(b over inputs at 0) - sum(b over inputs at 1) <= S - #ones.

    Only coefficients whose input changed since ``previous`` are rewritten; returns the new ones."""
    coef = 1.0 - 2.0 * inp
    changed = np.arange(len(coef)) if previous is None else np.flatnonzero(coef != previous)
    if len(changed):
        session.set_entries(np.full(len(changed), row), changed, coef[changed])
    session.set_row_bounds([row], [-np.inf], [S - inp.sum()])
    return coef


class BinaryMilp:
    """The layer-local MILP over ±1 inputs (DESIGN.md §7 step 3): the exact version of
    :class:`~bnnmip.attacks.iprop_local.LocalBinary`'s objective.

    Columns: the free inputs (binaries), one binary per unit, and per unit two integer progress
    columns (up, down); rows: the exact big-M rows of every unit, ``up_j <= s_j - s0_j`` and
    ``down_j <= s0_j - s_j`` (fixed coefficients, right-hand sides updated), and the change
    budget.  Before each solve only *soft* units (with a weight: the objective rewards ending at
    ``desired``) and *hard* units (must keep their value) that the movable inputs can reach keep
    their rows; the others are freed.  The big-M coefficients are rewritten from the range the
    movable inputs and the budget allow (M of order S, not the fan-in), so the relaxation stays
    tight.  With ``credit`` = β > 0 a target earns ``(1 - β) w`` for crossing and ``β w`` spread
    over the progress it needs (capped there); ``cost`` is charged per flipped input.
    """

    def __init__(self, data: LayerData, backend: str, reuse: bool, threads, mip_gap: float):
        n, m = len(data.inputs), len(data.theta)
        b = ModelBuilder()
        in_cols = b.add_columns(data.in_lower, data.in_upper, True, data.k - 1, data.inputs)
        self.unit_cols = b.add_columns(np.zeros(m), np.ones(m), True, data.k, np.arange(m))
        rows = UnitRows(data.coef, in_cols, data.theta - n, data.theta + n, data.theta, data.delta, 0.0)
        b.add_unit_rows(f"l{data.k}", np.arange(m), rows, self.unit_cols)
        self.on_row, self.off_row = np.arange(m), np.arange(m, 2 * m)
        # Progress towards a target's side, clipped below at 0 (moving away is not penalised, as in
        # the native objective): progress column t in [0, cap] and a binary z with
        # t <= (s - s0) + M (1 - z) and t <= M z, per direction (up, down).
        zero, units, big = np.zeros(m), np.arange(m), 2.0 * (n + 1)
        r, c = np.nonzero(data.coef)
        vals = data.coef[r, c]
        self.progress = {}
        for name, sign in (("up", 1.0), ("down", -1.0)):
            t = b.add_columns(zero, zero, True, data.k, units)
            z = b.add_columns(zero, zero, True, data.k, units)
            rows = np.concatenate([r, units, units])
            cols = np.concatenate([in_cols[c], t, z])
            gap = b.add_block(rows, cols, np.concatenate([-sign * vals, np.ones(m), np.full(m, big)]),
                              np.full(m, -np.inf), zero, f"{name}_gap")
            b.add_block(np.concatenate([units, units]), np.concatenate([t, z]),
                        np.concatenate([np.ones(m), np.full(m, -big)]), np.full(m, -np.inf), zero, f"{name}_on")
            self.progress[name] = (t, z, gap, sign, big)
        self.budget_row = b.add_row(in_cols, np.ones(n), -np.inf, np.inf, "budget")
        model = b.model(np.zeros(b.n_cols), 0.0, (), f"iprop_layer_{data.k}")
        self.data = data
        self.session = open_session(model, backend, reuse=reuse, threads=threads, mip_gap=mip_gap)
        self.budget = None

    def solve(self, inp, h, weights, desired, S, time_limit, movable, hard=None, cost=None,
              credit: float = 0.0) -> np.ndarray | None:
        """New values of the input columns, or None if there is nothing to solve or no solution."""
        d, s = self.data, self.session
        lo, hi, L, U = d.ranges(inp, S, movable)
        reachable = d.reachable(L, U)
        soft = (weights > 0) & reachable
        if not soft.any() and credit == 0:
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
        # Partial credit also for targets the budget cannot bring across (progress rows only).
        target = (weights > 0) & (desired != 0) & ~d.box_fixed & ((desired > 0) != (on > 0))
        self._set_progress(s0, np.where(desired > 0, on_side - s0, s0 - off_side), target & (credit > 0), desired)
        gain = np.where(target, 1.0 - credit, 1.0) * weights
        s.set_objective(self.unit_cols, np.where(soft, gain * desired, 0.0))
        need = np.maximum(np.where(desired > 0, d.theta + d.margin - s0, s0 - d.theta + d.delta), 1.0)
        per_step = np.where(target, credit * weights / need, 0.0)
        for name, want in (("up", desired > 0), ("down", desired < 0)):
            s.set_objective(self.progress[name][0], np.where(want, per_step, 0.0))
        if cost is not None:
            s.set_objective(np.arange(len(inp)), -np.asarray(cost) * (1.0 - 2.0 * inp))
        start = np.concatenate([inp, on, np.zeros(4 * len(on))])
        sol = s.solve(time_limit=max(time_limit, 0.01), start=start)
        if not sol.has_solution:
            return None
        return np.rint(np.clip(sol.values[: len(inp)], lo, hi))

    def _set_progress(self, s0, need, credited, desired) -> None:
        """Progress columns: at most ``need`` towards a credited target's side, 0 otherwise."""
        s, m = self.session, len(s0)
        cap = np.where(credited, np.ceil(np.maximum(need, 0.0)), 0.0)
        for name, want in (("up", desired > 0), ("down", desired < 0)):
            t, z, gap, sign, big = self.progress[name]
            s.set_col_bounds(t, np.zeros(m), np.where(want, cap, 0.0))
            s.set_col_bounds(z, np.zeros(m), np.where(want & (cap > 0), 1.0, 0.0))
            s.set_row_bounds(gap, np.full(m, -np.inf), big - sign * s0)


class InputLp:
    """The input layer as a linear program: maximise the targets' capped, normalised progress.

    With ``z_j = s_j`` (unit j's pre-activation over the pixel columns), progress columns
    ``t_j <= ±(z_j - s0_j)`` capped at the distance to the far side of the threshold, and the
    objective ``sum_j w_j t_j / cap_j``, a target counts fully once it crosses and partly as it
    gets closer (a MAX-SAT surrogate that also rewards progress); held units are bounds on ``z``.
    Pixels are continuous and rounded to the grid afterwards (the rows keep a margin for that).
    Only bounds, right-hand sides and costs change between solves, so the dual simplex restarts
    from the previous basis: far faster than a MILP over hundreds of pixels.
    """

    def __init__(self, data: LayerData, backend: str, reuse: bool, threads, integer: bool = False):
        m = len(data.theta)
        units = np.arange(m)
        # Finite bounds everywhere (the full box's range of each unit), so that the integer
        # version over grid steps (for CP-SAT, which solves no LPs) is the same model.
        _, _, self.L, self.U = data.ranges(data.in_lower, np.inf)
        self.L, self.U = np.floor(self.L) - 1.0, np.ceil(self.U) + 1.0
        span = self.U - self.L
        b = ModelBuilder()
        b.add_columns(data.in_lower, data.in_upper, integer, -1, data.inputs)
        self.z = b.add_columns(self.L, self.U, integer, 0, units)
        self.up = b.add_columns(-span, span, integer, 0, units)
        self.down = b.add_columns(-span, span, integer, 0, units)
        inf = np.full(m, np.inf)
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
        s.set_col_bounds(self.z, np.where(held & on, np.ceil(np.minimum(d.theta + d.margin, s0)), self.L),
                         np.where(held & ~on, np.floor(np.maximum(d.theta - d.delta, s0)), self.U))
        span = self.U - self.L
        s.set_col_bounds(self.up, -span, np.where(up, np.ceil(cap), span))
        s.set_col_bounds(self.down, -span, np.where(down, np.ceil(cap), span))
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


def solves_lps(backend: str) -> bool:
    """Whether ``backend`` solves LPs (CP-SAT does not: IProp's input layer is then an integer program)."""
    return get_backend(backend).capabilities.lp


def layer_solver(data: LayerData, backend: str, reuse: bool, threads, mip_gap: float):
    """The backend model of one stage: :class:`BinaryMilp`, or :class:`InputLp` over the pixels
    (an integer program over grid steps for a backend without LPs)."""
    if data.kind == "binary":
        return BinaryMilp(data, backend, reuse, threads, mip_gap)
    if solves_lps(backend):
        return InputLp(data, backend, reuse, threads)
    if not (data.grid and np.all(data.coef == np.rint(data.coef)) and data.margin == 0):
        raise InvalidArgumentError(f"backend={backend!r} solves no LPs, and IProp's input layer is an integer "
                                   "program only on an input grid (levels) with ±1 first-layer weights; use "
                                   "solver='local' or an LP backend")
    return InputLp(data, backend, reuse, threads, integer=True)
