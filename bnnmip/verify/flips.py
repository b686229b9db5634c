r"""Branch-and-bound over the first free layer's flips, pruned by pairwise conflicts.

The first free layer is layer 1, over the pixels (real-input networks) or over the free input bits
(input binarization).  Every pattern of it an input of the box reaches is the clean pattern with
some set :math:`T` of free units *flipped*.  Unit :math:`j` flips only if :math:`\sigma_j w_j \cdot d \ge n_j`
for the input change :math:`d` (pixels in grid steps or values; bits 0/1 for "this bit flips"),
:math:`\sigma_j` the direction of the flip.  Two units can flip together only if one :math:`d` in the
box does both; with ±1 weights this is decided exactly in closed form (inputs where the oriented rows
agree push both to their extremes; where they disagree, every unit of one is a unit lost by the other).
So every reachable flip set is a *clique* of the compatibility graph, and at small radii those are
few (thousands where :math:`2^{|F|}` is a billion).

The search enumerates cliques depth first.  A node (flip set :math:`S`, candidates :math:`C`: the units
compatible with all of :math:`S`) bounds the second stage's pre-activations by the clean value plus
the flips of :math:`S` plus every possible subset of :math:`C`, propagates interval bounds to the
output, and is closed when no target's margin can reach zero.  Each flip set is evaluated exactly
(the pattern :math:`S` itself); one that changes the prediction is checked for reachability with a
small integer program over the inputs (:mod:`.first_layer`).  A finished
search proves robustness; a reachable bad pattern is an adversarial input.
"""

from __future__ import annotations

import numpy as np

from ..bounds import LayerBounds, fix_units, propagate_bounds
from ..timing import Deadline
from .first_layer import first_free_layer
from .problem import Instance, logits_after

BATCH = 2048  # flip sets evaluated exactly per batch
MAX_CHECKS = 256  # reachability checks of bad patterns before the search gives up


class FlipSearch:
    """The state of one search (see the module docstring)."""

    def __init__(self, inst: Instance, backend: str = "highs"):
        self.inst, self.backend = inst, backend
        self.layer = layer = first_free_layer(inst)
        self.free, self.clean = layer.free, layer.clean
        self.rows, self.need, self.lo, self.hi = layer.rows, layer.need, layer.lo, layer.hi
        self.compatible = compatibility(self.rows, self.need, self.lo, self.hi, layer.binary)
        stages = inst.net.threshold_stages
        nxt = stages[layer.stage + 1] if len(stages) > layer.stage + 1 else None
        # delta[k, i]: change of the next stage's pre-activation k when free unit i flips
        if nxt is not None:
            w = nxt.weight[:, self.free].astype(np.float64)
            self.delta = w * (-2.0 * self.clean[self.free])[None, :]
            self.a2 = nxt.weight.astype(np.float64) @ self.clean
            self.up_count = (self.delta > 0).astype(np.float64)  # flips that raise / lower each unit
            self.down_count = (self.delta < 0).astype(np.float64)
            self.stage2 = nxt
            self.deeper = len(stages) > layer.stage + 2
        self.checks = 0
        self.pending: list[int] = []  # flip sets (bitsets over self.free) awaiting exact evaluation

    def _box_max(self, rows: np.ndarray) -> np.ndarray:
        """``max over the box of rows · Δ`` for every row (each input at the end that helps)."""
        return np.maximum(rows * self.lo, rows * self.hi).sum(axis=-1)

    # ------------------------------------------------------------------ the search
    def run(self, deadline: Deadline) -> str:
        n = len(self.free)
        order = self._order()
        self.nbr = [_mask(self.compatible[a]) for a in range(n)]
        rows0 = np.zeros(self.rows.shape[1])
        cand0 = self._reachable_candidates(_mask(np.ones(n, bool)), rows0, 0.0)
        if self.bounded and self._upper(self.a2, cand0) < 0:
            return "robust"
        stack = [(0, cand0, self.a2 if self.bounded else None, rows0, 0.0)]  # nodes whose bound is open
        while stack:
            if deadline.expired():
                return "unknown"
            flips, cand, centre, rows, need = stack.pop()
            self.inst.stats.nodes += 1
            self.pending.append(flips)
            stack.extend(self._children(flips, cand, centre, rows, need, order))
            if len(self.pending) >= BATCH:
                verdict = self._evaluate()
                if verdict != "robust":
                    return verdict
        return self._evaluate()

    def _children(self, flips: int, cand: int, centre, rows: np.ndarray, need: float, order: list[int]) -> list:
        """The node's children whose bound is still open, the most promising last (popped first).

        Each child adds one candidate and keeps only the candidates generated after it (so every clique
        is met once, whatever order the children are explored in).
        """
        scored = []
        for v in order:
            low = 1 << v
            if not cand & low:
                continue
            cand ^= low
            child_rows, child_need = rows + self.rows[v], need + self.need[v]
            child_cand = self._reachable_candidates(cand & self.nbr[v], child_rows, child_need)
            child_centre = centre + self.delta[:, v] if self.bounded else None
            upper = self._upper(child_centre, child_cand) if self.bounded else 0.0
            if upper >= 0:
                scored.append((upper, (flips | low, child_cand, child_centre, child_rows, child_need)))
        scored.sort(key=lambda item: item[0])
        return [child for _, child in scored]

    def _reachable_candidates(self, cand: int, rows: np.ndarray, need: float) -> int:
        """The candidates ``v`` whose flip the box may still afford beside the node's: the sum of the
        flip constraints of ``flips ∪ {v}`` (a valid constraint itself) must be satisfiable in the box."""
        members = np.flatnonzero(_bits(cand, len(self.free)))
        if not len(members):
            return cand
        ok = self._box_max(rows[None, :] + self.rows[members]) >= need + self.need[members] - 1e-9
        return _mask_of(members[ok]) if not ok.all() else cand

    @property
    def bounded(self) -> bool:
        return hasattr(self, "delta")

    def _order(self) -> list[int]:
        """Units in the order children are generated: the least influential first, so that the most
        influential are popped (explored) first and every later sibling drops them from its candidates."""
        if not self.bounded:
            return list(range(len(self.free)))
        return [int(v) for v in np.argsort(np.abs(self.delta).sum(axis=0), kind="stable")]

    def _upper(self, centre: np.ndarray, cand: int) -> float:
        """An upper bound on every target's margin over the node's flips plus any clique of ``cand``.

        The second stage moves by the flips of any subset of the candidates, and by at most ``omega``
        of them (a clique takes at most one unit of each colour class of a greedy colouring).
        """
        members = _bits(cand, len(self.free))
        up = self.up_count @ members
        down = self.down_count @ members
        omega = _colour_bound(cand, self.nbr)
        lower = centre - 2.0 * np.minimum(down, omega)
        upper = centre + 2.0 * np.minimum(up, omega)
        fixed = fix_units(lower, upper, self.stage2.threshold)
        if self.deeper:
            fixed = propagate_bounds(self.inst.net, self.layer.stage + 1, LayerBounds(lower, upper, fixed))[-1].fixed
        return float(self.inst.margin_upper_of(fixed).max())

    def _evaluate(self) -> str:
        """Exact evaluation of the pending flip sets; reachability checks of those that flip."""
        masks, self.pending = self.pending, []
        if not masks:
            return "robust"
        post = np.repeat(self.clean[None, :], len(masks), axis=0).astype(np.float32)
        bits = np.stack([_bits(m, len(self.free)) for m in masks]).astype(bool)
        post[:, self.free] = np.where(bits, -self.clean[self.free], self.clean[self.free])
        self.inst.stats.patterns += len(masks)
        bad = np.flatnonzero(self.inst.flips(logits_after(self.inst.net, self.layer.stage, post)))
        for i in bad[np.argsort(bits[bad].sum(axis=1), kind="stable")]:  # fewest flips first
            if self.checks >= MAX_CHECKS or self.inst.deadline.expired():
                return "unknown"
            self.checks += 1
            outcome = self.layer.reach(self.inst, post[i, self.free], self.backend)
            if outcome in ("adversarial", "unknown"):
                return outcome
        return "robust"


def _mask(flags: np.ndarray) -> int:
    """A bitset (Python int) of the true entries."""
    return int.from_bytes(np.packbits(np.asarray(flags, bool), bitorder="little").tobytes(), "little")


def _mask_of(indices: np.ndarray) -> int:
    mask = 0
    for i in indices.tolist():
        mask |= 1 << i
    return mask


def _bits(mask: int, n: int) -> np.ndarray:
    """The bitset as float64 0/1 of length ``n``."""
    raw = np.frombuffer(mask.to_bytes((n + 7) // 8 or 1, "little"), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(np.float64)


def _colour_bound(cand: int, nbr: list[int]) -> int:
    """An upper bound on the largest clique within ``cand``: the classes of a greedy colouring
    (each class pairwise incompatible, so a clique holds at most one unit of each)."""
    colours = 0
    left = cand
    while left:
        colours += 1
        free = left
        while free:
            low = free & -free
            v = low.bit_length() - 1
            left ^= low
            free &= ~(low | nbr[v])  # the rest of this class: not compatible with v
    return colours


def compatibility(rows: np.ndarray, need: np.ndarray, lo: np.ndarray, hi: np.ndarray, binary: bool) -> np.ndarray:
    """Which pairs of free first-layer units one input change in the box can flip together (symmetric).

    Exact in closed form for ±1 rows (pixels where the oriented rows agree push both units to their
    extremes; where they disagree, one unit's gain is the other's loss); with real rows every pair is kept.
    """
    m = len(rows)
    if not binary:
        return ~np.eye(m, dtype=bool)
    S = rows
    best = np.maximum(S * lo, S * hi)  # each pixel's best push for each unit
    worst = np.minimum(S * lo, S * hi)
    # With ±1 rows, [S_a = S_b] = (1 + S_a S_b) / 2: the sums over agreeing pixels are matrix products.
    Y = 0.5 * (best.sum(axis=1)[:, None] + (best * S) @ S.T)  # both units at their extremes where they agree
    x_lo = 0.5 * (worst.sum(axis=1)[:, None] - (worst * S) @ S.T)
    x_hi = 0.5 * (best.sum(axis=1)[:, None] - (best * S) @ S.T)
    # a gets Y + X, b gets Y - X with X in [x_lo, x_hi]: feasible iff some X meets both needs.
    ok = np.maximum(x_lo, need[:, None] - Y) <= np.minimum(x_hi, Y - need[None, :]) + 1e-9
    ok = ok & ok.T
    np.fill_diagonal(ok, False)
    return ok


def branch_flips(inst: Instance, backend: str = "highs", deadline: Deadline | None = None) -> str:
    """Decide by branch-and-bound over the first free layer's flips (see the module docstring)."""
    return FlipSearch(inst, backend).run(deadline or inst.deadline)
