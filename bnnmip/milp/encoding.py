"""The inverse map of an attack MILP: column values <-> inputs (:class:`AttackEncoding`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import LayerBounds
from ..box import InputBox
from ..network import BNN


@dataclass(frozen=True, eq=False)
class AttackEncoding:
    """How an attack MILP maps back to the network: the inverse data of :func:`~bnnmip.attack_milp`."""

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

    @property
    def n_cols(self) -> int:
        return len(self.pixel_cols) + sum(int((c >= 0).sum()) for c in self.stage_cols)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """The input (flat, in the box) that a column vector of this MILP describes."""
        values = np.asarray(values, np.float64)
        x = self.base.copy()
        cols = self.pixel_cols
        if len(cols):
            v = values[: len(cols)]
            if self.grid_pixels:
                x[cols] = self.box.from_steps(np.clip(np.rint(v), self.box.k_lower[cols], self.box.k_upper[cols]))
            else:
                x[cols] = np.clip(v, self.box.lower[cols], self.box.upper[cols])
        if self.net.input_binarization is not None:
            bit_cols = self.stage_cols[0]
            free = np.flatnonzero(bit_cols >= 0)
            x[free] = pixels_with_bits(self.net, self.box, self.base, free, values[bit_cols[free]] > 0.5, self.margin)
        return x

    def encode(self, x_in: np.ndarray) -> np.ndarray:
        """The column vector describing input ``x_in`` (a warm start for this MILP)."""
        x_in = np.asarray(x_in, np.float64).reshape(-1)
        values = np.zeros(self.n_cols)
        if len(self.pixel_cols):
            v = x_in[self.pixel_cols]
            values[: len(self.pixel_cols)] = self.box.to_steps(v) if self.grid_pixels else v
        acts = self.net.forward(x_in)
        for cols, h in zip(self.stage_cols, acts.post):
            free = cols >= 0
            values[cols[free]] = (h[0][free] > 0).astype(np.float64)
        return values


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
    if box.on_grid:
        width = int((box.k_upper[pixels] - box.k_lower[pixels]).max(initial=0)) + 1
        k = box.k_lower[pixels][:, None] + np.arange(width)[None, :]
        valid = k <= box.k_upper[pixels][:, None]
        values = box.from_steps(k)
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
