r"""The perturbation box: the one home of input checks, grid snapping and box membership.

Box of radius :math:`\varepsilon` around :math:`x`: :math:`lo_i = \max(x_i - \varepsilon, lo)`,
:math:`hi_i = \min(x_i + \varepsilon, hi)`.  On an input grid (``levels`` steps over the input range,
:data:`DEFAULT_LEVELS` for 8-bit images) the box holds the grid points :math:`lo + k\,s` inside it,
and also says which steps :math:`k` they are; attacks perturb on that grid, so the adversarial
images they report are exact 8-bit images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .network import BNN
from .validate import check_eps, check_levels

DEFAULT_LEVELS = 255
"""The grid of 8-bit images: the command line's default, and what image data sets hold."""

_GRID_TOL = 1e-9  # in grid steps: eps = 2/255 must reach the point two steps away
_CONTAINS_TOL = 1e-9  # in input units, for values that went through float arithmetic
_ON_GRID_TOL = 1e-6  # in grid steps


def check_input(net: BNN, x) -> np.ndarray:
    """One input as a flat float64 vector inside the network's input range."""
    X = net.as_batch(x, name="x")
    if len(X) != 1:
        raise InvalidArgumentError(f"x: expected one input, got a batch of {len(X)}")
    lo, hi = net.input_range
    tol = 1e-9 * (hi - lo)
    if X.min() < lo - tol or X.max() > hi + tol:
        raise InvalidArgumentError(
            f"x: values range over [{X.min():g}, {X.max():g}], outside the input range [{lo:g}, {hi:g}]"
        )
    return np.clip(X[0], lo, hi)


@dataclass(frozen=True)
class Radius:
    """An L∞ radius as asked and as searched: on a grid, the whole grid steps within it.

    ``str()`` reads ``5/255 = 0.0196`` on the 8-bit grid of [0, 1] (``5 steps of 0.5 = 2.5`` on another
    range), ``0.02`` when continuous; :meth:`describe` adds what was asked when it differs.
    """

    asked: float
    steps: int | None = None  # None: continuous
    levels: int | None = None
    step: float | None = None

    @property
    def value(self) -> float:
        """The radius searched: ``steps * step`` on a grid, the asked radius when continuous."""
        return self.asked if self.steps is None else self.steps * self.step

    def __str__(self) -> str:
        if self.steps is None:
            return f"{self.asked:.3g}"
        if abs(self.step * self.levels - 1.0) < 1e-12:
            return f"{self.steps}/{self.levels} = {self.value:.3g}"
        return f"{self.steps} steps of {self.step:.3g} = {self.value:.3g}"

    def describe(self) -> str:
        """``str()``, then '(asked 0.02)' when the grid rounded the asked radius down, or '(continuous)'."""
        if self.steps is None:
            return f"{self} (continuous)"
        if abs(self.value - self.asked) > _GRID_TOL * self.step:
            return f"{self} (asked {self.asked:g})"
        return str(self)

    def to_dict(self) -> dict:
        return {"asked": self.asked, "searched": self.value, "steps": self.steps, "levels": self.levels,
                "step": self.step}


def grid_radius(eps, levels: int | None, input_range: tuple[float, float] = (0.0, 1.0)) -> Radius:
    """``eps`` on the grid of ``levels`` steps over ``input_range``: the whole steps within it (None: continuous)."""
    eps, levels = check_eps(eps), check_levels(levels)
    if levels is None:
        return Radius(eps)
    lo, hi = input_range
    step = (hi - lo) / levels
    return Radius(eps, int(np.floor(eps / step + _GRID_TOL)), levels, step)


@dataclass(frozen=True, eq=False)
class InputBox:
    """The set of inputs an attack may use: ``lower <= x <= upper``, on the grid ``origin + k * step``
    with ``k_lower <= k <= k_upper`` when ``step`` is set."""

    lower: np.ndarray
    upper: np.ndarray
    k_lower: np.ndarray | None = None
    k_upper: np.ndarray | None = None
    step: float | None = None
    origin: float = 0.0  # the input range's lower end: grid point k is origin + k * step
    radius: Radius | None = None  # the radius it was made for

    @property
    def on_grid(self) -> bool:
        return self.step is not None

    @property
    def open(self) -> np.ndarray:
        """Which inputs can move at all."""
        return self.upper > self.lower

    def to_steps(self, x: np.ndarray) -> np.ndarray:
        """Grid indices of (points near) grid values ``x`` (float64 integers)."""
        return np.rint((np.asarray(x, np.float64) - self.origin) / self.step)

    def from_steps(self, k: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(k, np.float64) * self.step

    def snap(self, x: np.ndarray) -> np.ndarray:
        """The point of the box nearest to ``x`` (per input; the nearest grid point on a grid)."""
        if self.step is None:
            return np.clip(x, self.lower, self.upper)
        return self.from_steps(np.clip(self.to_steps(x), self.k_lower, self.k_upper))

    def contains(self, x: np.ndarray) -> bool:
        """Whether ``x`` lies in the box (and on its grid, when it has one)."""
        x = np.asarray(x, np.float64)
        if np.any(x < self.lower - _CONTAINS_TOL) or np.any(x > self.upper + _CONTAINS_TOL):
            return False
        if self.step is None:
            return True
        k = (x - self.origin) / self.step
        return bool(np.all(np.abs(k - np.rint(k)) <= _ON_GRID_TOL))

    def random(self, rng: np.random.Generator, rows: int, inputs: np.ndarray | None = None) -> np.ndarray:
        """Uniform random points of the box (grid points on a grid), over all inputs or only ``inputs``."""
        idx = slice(None) if inputs is None else inputs
        lower, upper = self.lower[idx], self.upper[idx]
        if self.step is None:
            return rng.uniform(lower, upper, size=(rows, len(lower)))
        return self.from_steps(rng.integers(self.k_lower[idx], self.k_upper[idx] + 1, size=(rows, len(lower))))


def on_grid(x: np.ndarray, levels: int, input_range: tuple[float, float]) -> np.ndarray:
    """Which values of ``x`` lie on the grid of ``levels`` steps over ``input_range``."""
    lo, hi = input_range
    k = (np.asarray(x, np.float64) - lo) / ((hi - lo) / levels)
    return np.abs(k - np.rint(k)) <= _ON_GRID_TOL


def input_box(net: BNN, x, eps, levels: int | None = None) -> InputBox:
    """The L∞ ball of radius ``eps`` around ``x``, clipped to the input range.

    On a grid (``levels``, default the network's own) the box holds the grid points within
    ``eps`` of ``x``, and also says which steps ``k`` they are.
    """
    x, eps = check_input(net, x), check_eps(eps)
    levels = check_levels(net.levels if levels is None else levels)  # a network built by hand is checked too
    lo, hi = net.input_range
    lower, upper = np.maximum(x - eps, lo), np.minimum(x + eps, hi)
    radius = grid_radius(eps, levels, net.input_range)
    if levels is None:
        return InputBox(lower, upper, origin=lo, radius=radius)
    step = (hi - lo) / levels
    k_lower = np.ceil((lower - lo) / step - _GRID_TOL).astype(np.int64)
    k_upper = np.floor((upper - lo) / step + _GRID_TOL).astype(np.int64)
    if np.any(k_lower > k_upper):
        i = int(np.flatnonzero(k_lower > k_upper)[0])
        raise InvalidArgumentError(f"x: input {i} = {x[i]!r} has no grid point within eps={eps:g}")
    return InputBox(lo + k_lower * step, lo + k_upper * step, k_lower, k_upper, step, lo, radius)
