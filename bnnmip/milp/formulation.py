r"""The attack MILP of Khalil, Gupta & Dilkina (ICLR 2019), with fixed units eliminated.

For a target class :math:`t` and the clean prediction :math:`c`, with :math:`h = 2b - 1` for the
binaries of free units:

.. math::
    \max\ (A_t - A_c) \cdot h_D + (c_t - c_c) \quad \text{s.t. for every free unit } j
    \text{ of every layer, with } s_j \text{ its pre-activation over the free inputs:} \\
    s_j + (L'_j - \theta'_j - m)\, b_j \ge L'_j \qquad (b_j = 1 \Rightarrow s_j \ge \theta'_j + m) \\
    s_j - (U'_j - \theta'_j + \delta)\, b_j \le \theta'_j - \delta
    \qquad (b_j = 0 \Rightarrow s_j \le \theta'_j - \delta)

The rows are written over :math:`s_j = \sum_{i\ \mathrm{free}} w_{ji} v_i`, with the fixed inputs
folded into the threshold :math:`\theta'_j`:

* ±1 layers: :math:`v = b` (so :math:`a = c + 2s`), :math:`\theta' = (\theta - c)/2` is an integer and
  :math:`\delta = 1`: exact, no tolerance;
* a ±1 first layer on the input grid: :math:`v = k` (integer grid steps), :math:`\theta'` rounded up
  to an integer, :math:`\delta = 1`: exact;
* otherwise (continuous inputs, or real weights): :math:`v = x` (or grid steps with coefficients
  :math:`w \cdot` step), :math:`\delta = m` = ``margin``.
  ``margin = 0`` is a relaxation (sound for certificates); ``margin > 0`` a restriction whose
  solutions sit clearly on their side of every threshold (for attacks).

With input binarization, a free input bit needs no pixel variable at all: each bit depends on
its own pixel only, so any bit pattern is reachable and the pixels are chosen afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..bounds import InputBox, LayerBounds, check_input, input_box, interval_bounds_from_box
from ..errors import InvalidArgumentError
from ..network import BNN
from .model import ColumnMap, MilpModel

_TAU_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class AttackEncoding:
    """How an attack MILP maps back to the network: the inverse data of :func:`attack_milp`."""

    net: BNN
    x: np.ndarray  # the clean input (flat)
    base: np.ndarray  # the clean input snapped into the box (the value of every fixed pixel)
    eps: float
    label: int
    target: int
    box: InputBox
    bounds: list[LayerBounds]
    pixel_cols: np.ndarray  # pixels with a variable, in column order 0..len-1
    grid_pixels: bool  # pixel variables are integer grid steps
    stage_cols: list[np.ndarray]  # per threshold stage: column of each unit, -1 if fixed
    margin: float
    levels: int | None

    @property
    def exact(self) -> bool:
        """Whether every row is exact (no ``margin``): no real-valued first layer with pixel variables."""
        return len(self.pixel_cols) == 0 or (self.grid_pixels and self.net.layers[0].binary_weights)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """The input (flat, in the box) that a column vector of this MILP describes."""
        x = self.base.copy()
        if len(self.pixel_cols):
            v = np.asarray(values, np.float64)[: len(self.pixel_cols)]
            if self.grid_pixels:
                lo = self.net.input_range[0]
                k = np.clip(np.rint(v), self.box.k_lower[self.pixel_cols], self.box.k_upper[self.pixel_cols])
                x[self.pixel_cols] = lo + k * self.box.step
            else:
                x[self.pixel_cols] = np.clip(v, self.box.lower[self.pixel_cols], self.box.upper[self.pixel_cols])
        ib = self.net.input_binarization
        if ib is not None:
            cols = self.stage_cols[0]
            free = np.flatnonzero(cols >= 0)
            want = np.asarray(values, np.float64)[cols[free]] > 0.5
            x[free] = _pixels_with_bits(self, free, want)
        return x

    def encode(self, x_in: np.ndarray) -> np.ndarray:
        """The column vector describing input ``x_in`` (a warm start for this MILP)."""
        x_in = np.asarray(x_in, np.float64).reshape(-1)
        n_cols = len(self.pixel_cols) + sum(int((c >= 0).sum()) for c in self.stage_cols)
        values = np.zeros(n_cols)
        if len(self.pixel_cols):
            v = x_in[self.pixel_cols]
            if self.grid_pixels:
                v = np.rint((v - self.net.input_range[0]) / self.box.step)
            values[: len(self.pixel_cols)] = v
        acts = self.net.forward(x_in)
        for cols, h in zip(self.stage_cols, acts.post):
            free = cols >= 0
            values[cols[free]] = (h[0][free] > 0).astype(np.float64)
        return values


def _pixels_with_bits(enc: AttackEncoding, pixels: np.ndarray, want_on: np.ndarray) -> np.ndarray:
    return pixels_with_bits(enc.net, enc.box, enc.base, pixels, want_on, enc.margin)


def pixels_with_bits(net: BNN, box: InputBox, base: np.ndarray, pixels: np.ndarray, want_on: np.ndarray,
                     margin: float = 0.0) -> np.ndarray:
    """For each pixel, the value in the box nearest to ``base`` whose input bit is ``want_on``.

    The bits must be free in the box (both values reachable).  On a grid the nearest grid point
    is chosen; continuous, a pixel that must change steps just past its threshold (by ``margin``,
    at least 1e-6 of the input range).
    """
    ib = net.input_binarization
    d, theta = ib.direction[pixels].astype(np.float64), ib.threshold[pixels]
    base = base[pixels]
    if box.step is not None:
        lo = net.input_range[0]
        width = int((box.k_upper[pixels] - box.k_lower[pixels]).max(initial=0)) + 1
        k = box.k_lower[pixels][:, None] + np.arange(width)[None, :]
        valid = k <= box.k_upper[pixels][:, None]
        values = lo + k * box.step
        ok = valid & ((d[:, None] * values >= theta[:, None]) == want_on[:, None])
        distance = np.where(ok, np.abs(values - base[:, None]), np.inf)
        return values[np.arange(len(pixels)), np.argmin(distance, axis=1)]
    t = theta * d  # raw threshold
    on_now = d * base >= theta
    gap = max(margin, 1e-6 * (box.upper.max() - box.lower.min() + 1))
    # Step past the threshold on either side: a pixel exactly on it is on in exact arithmetic but
    # may be off in onnxruntime's float32 batch norm.
    target = np.where(want_on, t + d * gap, t - d * gap)
    x = np.where(on_now == want_on, base, target)
    return np.clip(x, box.lower[pixels], box.upper[pixels])


def check_target(net: BNN, label: int, target) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidArgumentError(f"target={target!r}: expected a class index (int)")
    if not 0 <= target < net.n_classes:
        raise InvalidArgumentError(f"target={target}: expected a class in 0..{net.n_classes - 1}")
    if target == label:
        raise InvalidArgumentError(f"target={target}: equals the clean prediction; choose another class")
    return int(target)


def attack_milp(
    net: BNN,
    x,
    eps,
    target: int,
    *,
    levels: int | None = None,
    bounds: str = "interval",
    margin: float = 0.0,
    label: int | None = None,
    layer_bounds: list[LayerBounds] | None = None,
) -> MilpModel:
    """The attack MILP for ``target`` around ``x`` at L∞ radius ``eps`` (DESIGN.md §5).

    Parameters
    ----------
    levels
        Perturb on the grid ``lo + k (hi - lo) / levels`` (default: the network's own grid, if any).
    bounds
        'interval' (DESIGN.md §4) or 'lp' (tightened per unit by LP relaxation, as MIPVerify does).
    margin
        Gap kept from thresholds of real-valued (continuous) units; 0 makes the MILP a relaxation
        of the exact problem (sound for certificates).
    label
        The clean prediction (computed when not given).
    layer_bounds
        Bounds already computed for this box by :func:`attack_bounds` (they do not depend on the
        target, so an untargeted attack computes them once); ``bounds`` is then ignored.

    Returns a :class:`MilpModel` whose ``info['encoding']`` (an :class:`AttackEncoding`) maps
    solutions back to inputs.
    """
    check_bounds_mode(bounds)
    margin = float(margin)
    if not np.isfinite(margin) or margin < 0:
        raise InvalidArgumentError(f"margin={margin!r}: expected a finite number >= 0")
    xf = check_input(net, x)
    label = int(net.predict(xf)[0]) if label is None else int(label)
    target = check_target(net, label, target)
    box = input_box(net, xf, eps, levels=levels)
    base = snap_to_box(net, xf, box)
    if layer_bounds is None:
        layer_bounds = attack_bounds(net, box, bounds)
    elif len(layer_bounds) != len(net.threshold_stages):
        raise InvalidArgumentError(f"layer_bounds: expected {len(net.threshold_stages)} stages, "
                                   f"got {len(layer_bounds)}")
    return _build(net, xf, base, float(eps), label, target, box, layer_bounds, margin, levels)


BOUNDS = ("interval", "lp")


def check_bounds_mode(bounds) -> str:
    if bounds not in BOUNDS:
        raise InvalidArgumentError(f"bounds={bounds!r}: expected one of {BOUNDS}")
    return bounds


def attack_bounds(net: BNN, box: InputBox, bounds: str = "interval", *, deadline: float | None = None
                  ) -> list[LayerBounds]:
    """Bounds of every threshold stage over ``box``: interval, or tightened by LP ('lp').

    ``deadline`` (a ``time.perf_counter()`` value) stops LP tightening early; the units not
    reached keep their interval bounds (still sound).
    """
    check_bounds_mode(bounds)
    layer_bounds = interval_bounds_from_box(net, box)
    if bounds == "lp":
        from .lp_bounds import tighten_bounds

        layer_bounds = tighten_bounds(net, box, layer_bounds, deadline=deadline)
    return layer_bounds


def snap_to_box(net: BNN, x: np.ndarray, box: InputBox) -> np.ndarray:
    """``x`` moved into the box (onto its nearest grid point when the box is a grid)."""
    if box.step is None:
        return np.clip(x, box.lower, box.upper)
    lo = net.input_range[0]
    k = np.clip(np.rint((x - lo) / box.step), box.k_lower, box.k_upper)
    return lo + k * box.step


class ModelBuilder:
    """Accumulates columns and rows, stage by stage, as CSR pieces (rows are only ever appended).

    Unit rows are laid out directly in CSR order (their columns are sorted: inputs first, then
    the unit's own binary, which is always added later), so :meth:`model` only concatenates.
    """

    def __init__(self):
        self.lower, self.upper, self.integer = [], [], []
        self.col_stage, self.col_index = [], []
        self.counts, self.indices, self.values = [], [], []  # per row block: nonzeros per row, CSR arrays
        self.row_lower, self.row_upper, self.row_names = [], [], []
        self.n_cols = self.n_rows = 0

    def add_columns(self, lower, upper, integer: bool, stage: int, index: np.ndarray) -> np.ndarray:
        n = len(index)
        self.lower.append(np.asarray(lower, np.float64))
        self.upper.append(np.asarray(upper, np.float64))
        self.integer.append(np.full(n, integer))
        self.col_stage.append(np.full(n, stage, np.int32))
        self.col_index.append(np.asarray(index, np.int32))
        cols = np.arange(self.n_cols, self.n_cols + n)
        self.n_cols += n
        return cols

    def add_unit_rows(self, name: str, units, coef, in_cols, unit_cols, L, U, theta, delta, margin):
        """The two big-M rows of each free unit: ``coef`` (m_f, p) over ``in_cols``.

        Row ``on_j``: ``coef_j · v + (L_j - theta_j - margin) b_j >= L_j``; row ``off_j``:
        ``coef_j · v - (U_j - theta_j + delta) b_j <= theta_j - delta`` (the unit's entry is kept
        even when zero, so sessions can change it).
        """
        m = len(units)
        if m == 0:
            return
        coef = np.asarray(coef, np.float64)
        in_cols, unit_cols = np.asarray(in_cols, np.int64), np.asarray(unit_cols, np.int64)
        order = np.argsort(in_cols, kind="stable")
        if np.any(order != np.arange(len(order))):
            in_cols, coef = in_cols[order], coef[:, order]
        if len(in_cols) and in_cols[-1] >= unit_cols.min():
            raise AssertionError("add_unit_rows: a unit's own column must come after its inputs")
        keep = np.ones((m, coef.shape[1] + 1), bool)
        keep[:, :-1] = coef != 0
        cols = np.empty(keep.shape, np.int64)
        cols[:, :-1], cols[:, -1] = in_cols, unit_cols
        indices, counts = cols[keep], keep.sum(axis=1)
        for last in (L - theta - margin, -(U - theta + delta)):
            vals = np.empty(keep.shape)
            vals[:, :-1], vals[:, -1] = coef, last
            self._append(counts, indices, vals[keep])
        inf = np.full(m, np.inf)
        self.row_lower += [np.asarray(L, np.float64), -inf]
        self.row_upper += [inf, np.asarray(theta - delta, np.float64)]
        self.row_names += [f"on_{name}_{j}" for j in units] + [f"off_{name}_{j}" for j in units]
        self.n_rows += 2 * m

    def _append(self, counts, indices, values) -> None:
        self.counts.append(np.asarray(counts, np.int64))
        self.indices.append(np.asarray(indices, np.int64))
        self.values.append(np.asarray(values, np.float64))

    def _append_coo(self, n: int, rows, cols, values) -> None:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        block = sp.csr_matrix((np.asarray(values, np.float64), (rows, cols)),
                              shape=(n, max(self.n_cols, int(cols.max(initial=-1)) + 1)))
        block.sum_duplicates()
        self._append(np.diff(block.indptr), block.indices, block.data)

    def add_block(self, rows, cols, values, lower, upper, name: str) -> np.ndarray:
        """Rows from COO entries (``rows`` numbered from 0 within the block); returns their indices."""
        n = len(lower)
        self._append_coo(n, rows, cols, values)
        self.row_lower.append(np.asarray(lower, np.float64))
        self.row_upper.append(np.asarray(upper, np.float64))
        self.row_names += [f"{name}_{i}" for i in range(n)]
        self.n_rows += n
        return np.arange(self.n_rows - n, self.n_rows)

    def add_row(self, cols, values, lower: float, upper: float, name: str) -> int:
        """One extra row; returns its index."""
        self._append_coo(1, np.zeros(len(cols), np.int64), cols, values)
        self.row_lower.append(np.array([lower], np.float64))
        self.row_upper.append(np.array([upper], np.float64))
        self.row_names.append(name)
        self.n_rows += 1
        return self.n_rows - 1

    def model(self, objective, offset, stage_names, name) -> MilpModel:
        def cat(parts, dtype=np.float64):
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        index = np.int32 if max(self.n_cols, 1) < 2**31 - 1 else np.int64
        indptr = np.zeros(self.n_rows + 1, np.int64)
        np.cumsum(cat(self.counts, np.int64), out=indptr[1:])
        A = sp.csr_matrix((cat(self.values), cat(self.indices, index), indptr.astype(index)),
                          shape=(self.n_rows, self.n_cols))
        return MilpModel(
            col_lower=cat(self.lower), col_upper=cat(self.upper), integrality=cat(self.integer, bool), A=A,
            row_lower=cat(self.row_lower), row_upper=cat(self.row_upper), objective=objective,
            objective_offset=float(offset), sense="max",
            columns=ColumnMap(cat(self.col_stage, np.int32), cat(self.col_index, np.int32), stage_names),
            row_names=self.row_names, name=name,
        )


def _build(net, x, base, eps, label, target, box, bounds, margin, levels) -> MilpModel:
    b = ModelBuilder()
    layout = add_stages(b, net, box, base, bounds, margin, len(bounds))
    objective, offset = _objective(net, label, target, bounds[-1], layout.stage_cols[-1], b.n_cols)
    model = b.model(objective, offset, layout.stage_names, f"bnn_attack_t{target}_c{label}")
    encoding = AttackEncoding(net, x, base, eps, label, target, box, bounds, layout.pixel_cols, layout.grid_pixels,
                              layout.stage_cols, margin, levels)
    model.info["encoding"] = encoding
    return model


@dataclass(frozen=True)
class StageLayout:
    """Where :func:`add_stages` put things: pixel columns, and per stage the column of each unit (-1: fixed)."""

    pixel_cols: np.ndarray
    grid_pixels: bool
    stage_cols: list[np.ndarray]
    stage_names: tuple[str, ...]


def add_stages(b: ModelBuilder, net: BNN, box: InputBox, base: np.ndarray, bounds: list[LayerBounds],
               margin: float, n_stages: int) -> StageLayout:
    """Columns and big-M rows of the first ``n_stages`` threshold stages (pixels first).

    The attack MILP uses every stage; LP bound tightening (:mod:`bnnmip.milp.lp_bounds`) uses the
    stages below the one it bounds.
    """
    stages = net.threshold_stages
    has_ib = net.input_binarization is not None
    stage_names = (("z",) if has_ib else ()) + tuple(f"h{i}" for i in range(1, net.depth + 1))
    first = net.layers[0]
    grid_pixels = box.step is not None and not has_ib
    pixel_cols = np.zeros(0, np.int64)
    # Pixel variables: only for a real first layer with free units, and only where the box is open.
    if not has_ib and n_stages > 0 and np.any(bounds[0].fixed == 0):
        open_box = box.upper > box.lower
        pixel_cols = np.flatnonzero(open_box & (first.weight[bounds[0].fixed == 0] != 0).any(axis=0))
        if grid_pixels:
            b.add_columns(box.k_lower[pixel_cols], box.k_upper[pixel_cols], True, -1, pixel_cols)
        else:
            b.add_columns(box.lower[pixel_cols], box.upper[pixel_cols], False, -1, pixel_cols)
    stage_cols = []
    for k in range(n_stages):
        stage, bnd = stages[k], bounds[k]
        units = np.flatnonzero(bnd.fixed == 0)
        cols = np.full(len(bnd.fixed), -1, np.int64)
        cols[units] = b.add_columns(np.zeros(len(units)), np.ones(len(units)), True, k, units)
        stage_cols.append(cols)
        if k == 0 and has_ib:
            continue  # input bits: free binaries, no rows (see the module docstring)
        if k == 0:
            rows = first_layer_rows(net, stage, bnd, units, box, base, pixel_cols, grid_pixels, margin)
            in_cols = np.arange(len(pixel_cols))
        else:
            rows = binary_layer_rows(stage, bnd, units, bounds[k - 1], stage_cols[k - 1])
            in_cols = rows.pop("in_cols")
        b.add_unit_rows(stage_names[k], units, rows["coef"], in_cols, cols[units], rows["L"], rows["U"],
                        rows["theta"], rows["delta"], rows["margin"])
    return StageLayout(pixel_cols, grid_pixels, stage_cols, stage_names)


def binary_layer_rows(layer, bnd: LayerBounds, units, prev: LayerBounds, prev_cols) -> dict:
    """Rows over the previous stage's free binaries: a = c + 2 s, exact integers."""
    free_in = np.flatnonzero(prev.fixed == 0)
    W = layer.weight[units].astype(np.float64)
    fixed_part = W @ prev.fixed.astype(np.float64)  # free inputs have fixed == 0
    Wf = W[:, free_in]
    c = fixed_part - Wf.sum(axis=1)
    theta2 = layer.threshold[units] - c
    if np.any(theta2 % 2):  # parity of the fan-in: a bug, never a data problem
        raise AssertionError("threshold parity broken in an integer layer")
    theta = theta2 / 2
    L = np.minimum(Wf, 0).sum(axis=1)
    U = np.maximum(Wf, 0).sum(axis=1)
    # Interval (or LP) bounds on a, in the same units, may be tighter than the free-input count.
    L = np.maximum(L, np.ceil((bnd.lower[units] - c) / 2 - _TAU_TOL))
    U = np.minimum(U, np.floor((bnd.upper[units] - c) / 2 + _TAU_TOL))
    return {"coef": Wf, "in_cols": prev_cols[free_in], "L": L, "U": U, "theta": theta, "delta": 1.0, "margin": 0.0}


def first_layer_rows(net, layer, bnd, units, box, base, pixel_cols, grid_pixels, margin) -> dict:
    """Rows of a real-valued first layer over the pixel variables (grid steps or values).

    On the grid with ±1 weights the rows are over integer steps with integer thresholds (exact,
    ``delta = 1``).  On the grid with real weights the pixels are still integer steps, but the
    coefficients ``w * step`` and thresholds are real, so ``margin`` applies as for continuous inputs.
    """
    W = layer.weight[units].astype(np.float64)
    fixed = np.ones(W.shape[1], bool)
    fixed[pixel_cols] = False
    Wv = W[:, pixel_cols]
    lo_range = net.input_range[0]
    if grid_pixels:
        C = W[:, fixed] @ base[fixed] + lo_range * Wv.sum(axis=1)
        v_lo, v_hi = box.k_lower[pixel_cols].astype(np.float64), box.k_upper[pixel_cols].astype(np.float64)
        if layer.binary_weights:
            tau = (layer.threshold[units] - C) / box.step
            finite = np.isfinite(tau)  # a constant unit keeps its infinite threshold
            theta = tau.copy()
            theta[finite] = np.ceil(tau[finite] - _TAU_TOL * (1 + np.abs(tau[finite])))
            coef, delta, m = Wv, 1.0, 0.0
        else:
            theta = layer.threshold[units] - C
            coef, delta, m = Wv * box.step, margin, margin
    else:
        C = W[:, fixed] @ base[fixed]
        theta = layer.threshold[units] - C
        v_lo, v_hi = box.lower[pixel_cols], box.upper[pixel_cols]
        coef, delta, m = Wv, margin, margin
    L = np.minimum(coef * v_lo, coef * v_hi).sum(axis=1)
    U = np.maximum(coef * v_lo, coef * v_hi).sum(axis=1)
    return {"coef": coef, "L": L, "U": U, "theta": theta, "delta": delta, "margin": m}


def _objective(net: BNN, label: int, target: int, last: LayerBounds, last_cols, n_cols):
    g = net.out_weight[target] - net.out_weight[label]
    free = last.fixed == 0
    offset = net.out_bias[target] - net.out_bias[label] + g[~free] @ last.fixed[~free] - g[free].sum()
    objective = np.zeros(n_cols)
    objective[last_cols[free]] = 2 * g[free]
    return objective, offset
