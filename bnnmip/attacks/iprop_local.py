r"""IProp's layer-local problems solved natively: weighted MAX-SAT by greedy local search.

A stage's units ``s = coef @ v`` (see :class:`~bnnmip.attacks.iprop_layers.LayerData`) receive
:class:`Goals` from the layer above: a desired sign per unit and a weight.  With
:math:`e_j = \pm 1` the desired sign, unit :math:`j` needs *progress* :math:`p_j = e_j (s'_j - s_j)
\ge r_j`, where :math:`r_j > 0` is the distance to its threshold (a *target*) and :math:`r_j \le 0`
the slack of a unit that should stay put (a *keep*).  The layer-local objective is

.. math::
    \Phi(p) = \sum_{r_j > 0} w_j \Big(\beta \min\big(\tfrac{p_j^+}{r_j}, 1\big) + (1-\beta)[p_j \ge r_j]\Big)
              - \sum_{r_j \le 0} w_j [p_j < r_j],

a MAX-SAT objective (satisfied targets, broken keeps) with partial credit :math:`\beta` for the
progress of targets not reached yet, so that a target needing more changes than one step allows
still pulls the search towards it (*partial propagation*).  Moving a target away costs nothing
(penalising it at the same rate halved the flips found on the tuning images: the search became
too timid).  The exact models of :mod:`~bnnmip.attacks.iprop_layers` have this objective.

* :class:`LocalBinary` (±1 inputs, at most ``S`` flips): greedy on :math:`\Phi` minus a per-input
  cost (how hard the stage below finds that flip), then a removal pass.  A flip moves every unit's
  progress by :math:`\pm 1`, so the gains of all candidate flips are two products with the weight
  matrix per greedy step: :math:`\tfrac12 |C|^\top(\Delta^+ + \Delta^-) + \tfrac12 d \odot
  C^\top(e \odot (\Delta^+ - \Delta^-))`, with :math:`\Delta^\pm_j` the change of unit ``j``'s term
  when its progress moves by :math:`\pm 1` and :math:`d_i = \pm 1` the direction of input ``i``'s flip.
* :class:`LocalInput` (pixels in the box, within ``S`` grid steps): a Lagrangian bang-bang
  heuristic: each pixel moves to the end of its range that the multiplier-weighted units prefer;
  multipliers of broken keeps grow, those of unreached targets grow, of overshot ones shrink; every
  round is a candidate, and the exact forward pass judges them all.
* :func:`marginal_goals`: the goals a solution passes to the stage below: a changed input is a
  target weighted by what undoing it would cost :math:`\Phi`; an unchanged one a keep weighted by
  what changing it would cost (or a bonus target, if changing it would help).

Products run in float32: on ±1 layers and on ±1 first layers over grid steps every value is an
integer far below :math:`2^{24}`, so they are exact; elsewhere they only guide the search, and
the exact forward pass judges every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .iprop_layers import LayerData

# Share of a target's weight paid for progress short of crossing its threshold (tuning images,
# 3 s: 0.25, 0.5, 0.75, 0.9 flipped 26, 37, 48, 45 of 186 hard pairs).
BETA = 0.75
# Greedy with lookahead (keep the best prefix of S steps) rather than stop at the first losing
# flip: 0.99 of the exact optimum instead of 0.93, and 55 rather than 50 of 186 hard pairs.
_LOOKAHEAD = True
_ROUNDS = 6  # Lagrangian rounds of the pixel heuristic (each one a candidate)


@dataclass(frozen=True)
class Goals:
    """What the layer above wants from a stage: per unit a desired sign (±1, 0 = indifferent) and a weight >= 0."""

    desired: np.ndarray
    weight: np.ndarray


def phi(p: np.ndarray, r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each unit's term of :math:`\\Phi` at progress ``p`` (elementwise)."""
    target = r > 0
    credit = BETA * np.clip(p / np.where(target, r, 1.0), 0.0, 1.0) + (1.0 - BETA) * (p >= r)
    return w * np.where(target, credit, -1.0 * (p < r))


class _Stage:
    """A stage's weights in float32 and its units' requirements."""

    def __init__(self, data: LayerData):
        self.data = data
        self.C = np.ascontiguousarray(data.coef, np.float32)
        self.CT = np.ascontiguousarray(self.C.T)
        self.absCT = np.abs(self.CT)

    def s(self, inp: np.ndarray) -> np.ndarray:
        return (self.C @ inp.astype(np.float32)).astype(np.float64)

    def requirement(self, s: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """The progress each unit needs to end at ``desired`` (±1; 0: -inf, no requirement)."""
        d = self.data
        on = d.theta + d.margin - s
        off = s - (d.theta - d.delta)
        return np.where(desired > 0, on, np.where(desired < 0, off, -np.inf))

    def weighted(self, inp: np.ndarray, goals: Goals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(r, w, e) over all units, with ``w = 0`` where a unit has no goal or cannot move."""
        r = self.requirement(self.s(inp), goals.desired)
        w = np.where((goals.desired != 0) & ~self.data.box_fixed & np.isfinite(r), goals.weight, 0.0)
        return np.where(w > 0, r, 0.0), w, np.sign(goals.desired).astype(np.float64)

    def toggle_gains(self, P, r, w, e, direction) -> np.ndarray:
        """For every input column, the change of :math:`\\Phi` when it flips (±1 inputs)."""
        up = phi(P + 1.0, r, w) - phi(P, r, w)
        down = phi(P - 1.0, r, w) - phi(P, r, w)
        both = self.absCT @ (up + down).astype(np.float32)
        diff = self.CT @ (e * (up - down)).astype(np.float32)
        return 0.5 * both.astype(np.float64) + 0.5 * direction * diff.astype(np.float64)


class LocalBinary(_Stage):
    """The ±1-input layer problem by greedy local search (see the module docstring)."""

    def solve(self, inp: np.ndarray, goals: Goals, S: int, movable: np.ndarray, cost: np.ndarray,
              rng: np.random.Generator) -> np.ndarray | None:
        """New 0/1 values of the input columns (at most ``S`` flips among ``movable``), or None."""
        r, w, e = self.weighted(inp, goals)
        if not w.any() or not movable.any():
            return None
        direction = 1.0 - 2.0 * inp
        P = np.zeros(len(r))
        chosen = np.zeros(len(inp), bool)
        closed = ~movable
        jitter = 1.0 + 1e-3 * rng.random(len(inp))
        # Greedy with lookahead: take the best flip even when it loses (a target two flips away
        # pays only at the second), then keep the best prefix of the sequence.
        order, total, best = [], 0.0, (0.0, 0)
        for step in range(S):
            gain = self.toggle_gains(P, r, w, e, direction) * jitter - cost
            gain[chosen | closed] = -np.inf
            c = int(np.argmax(gain))
            if not np.isfinite(gain[c]) or (gain[c] <= 0 and not _LOOKAHEAD):
                break
            chosen[c] = True
            order.append(c)
            P += e * self.C[:, c] * direction[c]
            total += gain[c]
            if total > best[0]:
                best = (total, step + 1)
        for c in order[best[1]:]:
            chosen[c] = False
            P -= e * self.C[:, c] * direction[c]
        # Removal pass: drop a chosen flip that no longer pays for itself.
        for c in np.flatnonzero(chosen):
            without = P - e * self.C[:, c] * direction[c]
            if (phi(without, r, w) - phi(P, r, w)).sum() + cost[c] > 0:
                chosen[c] = False
                P = without
        if not chosen.any():
            return None
        new = inp.copy()
        new[chosen] = 1.0 - new[chosen]
        return new

    def hardness(self, inp: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
        """Per unit: the flips of this stage's inputs that toggling it needs, over ``S``."""
        r = self.requirement(self.s(inp), -h.astype(np.float64))
        return np.maximum(r, 0.0) / S

    def marginal_goals(self, inp: np.ndarray, new: np.ndarray, goals: Goals, bonus: float = 0.5):
        """(desired 0/1 value, weight) of each input column, given the chosen ``new`` (see the module docstring)."""
        r, w, e = self.weighted(inp, goals)
        P = e * self.s(new - inp)
        delta = self.toggle_gains(P, r, w, e, 1.0 - 2.0 * new)
        desired = np.where(delta > 0, 1.0 - new, new)
        return desired, np.where(delta > 0, bonus * delta, -delta)


class LocalInput(_Stage):
    """The pixel layer problem by a Lagrangian bang-bang heuristic (see the module docstring)."""

    def bounds(self, inp: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return np.maximum(d.in_lower, inp - S * d.pixel_step), np.minimum(d.in_upper, inp + S * d.pixel_step)

    def hardness(self, inp: np.ndarray, h: np.ndarray, S: int) -> np.ndarray:
        """Per unit: its distance to the threshold over the furthest the pixels can push it (inf: never)."""
        lo, hi = self.bounds(inp, S)
        mid, half = (0.5 * (lo + hi) - inp).astype(np.float32), (0.5 * (hi - lo)).astype(np.float32)
        centre = (self.C @ mid).astype(np.float64)
        radius = (np.abs(self.C) @ half).astype(np.float64)
        toward = -h.astype(np.float64)
        reach = toward * centre + radius  # the most progress towards the other side
        r = self.requirement(self.s(inp), toward)
        return np.where(reach > 0, np.maximum(r, 0.0) / np.maximum(reach, 1e-12), np.inf)

    def solve(self, inp: np.ndarray, goals: Goals, S: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Candidate values of the pixel columns (grid steps or values), best first; [] if none."""
        r, w, e = self.weighted(inp, goals)
        target = (w > 0) & (r > 0)
        if not target.any():
            return []
        keep = (w > 0) & ~target
        lo, hi = self.bounds(inp, S)
        lam = np.where(target, w / np.maximum(r, 1e-12), 0.0)
        scale = lam[target].mean()
        mu = np.zeros(len(r))
        out, seen = [], set()
        for _ in range(_ROUNDS):
            score = (self.CT @ (e * (lam + mu)).astype(np.float32)).astype(np.float64)
            score += rng.standard_normal(len(score)) * 1e-3 * (np.abs(score).max(initial=0.0) + 1e-12)
            v = np.where(score > 0, hi, np.where(score < 0, lo, inp))
            p = e * self.s(v - inp)
            value = float(phi(p, r, w).sum())
            key = np.sign(score).tobytes()
            if key not in seen:
                seen.add(key)
                out.append((value, v))
            mu[keep & (p < r)] += 0.5 * scale
            short = target & (p < r)
            lam[short] *= 1.5
            lam[target & (p >= 2.0 * np.maximum(r, 1.0))] *= 0.5
        out.sort(key=lambda t: -t[0])
        return [v for value, v in out if value > 0]
