r"""float32 arithmetic with exact decisions: the fast forward pass's sign bits, row sums and rounding bound.

The fast path computes pre-activations in float32 (as onnxruntime does) and must still decide every
unit exactly.  :func:`near_threshold` says which units float32 rounding could have decided wrongly;
only those are recomputed in float64 (on images, about 0.1 % of the units).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .threads import buffer


def unit_signs(a: np.ndarray) -> np.ndarray:
    """``a`` (float32) overwritten by ±1 with its sign bit (+1 at +0): two integer passes, no branches."""
    bits = a.view(np.int32)
    np.bitwise_and(bits, np.int32(-(2**31)), out=bits)
    np.bitwise_or(bits, np.int32(0x3F800000), out=bits)  # 0x3F800000 is 1.0f
    return a


def row_abs_sum(x: np.ndarray) -> np.ndarray:
    """``sum_i |x_i|`` of every row of a float32 batch, in float32 (one BLAS pass when ``x >= 0``)."""
    ones = _ones(x.shape[1])
    if x.min(initial=0.0) >= 0:
        return x @ ones
    return np.abs(x, out=buffer(3, x.shape, np.float32)) @ ones


@lru_cache(maxsize=64)
def _ones(n: int) -> np.ndarray:
    ones = np.ones(n, np.float32)
    ones.flags.writeable = False
    return ones


def near_threshold(margin: np.ndarray, row_tol: np.ndarray, threshold_tol: np.ndarray, threshold_tol_max: float,
                   distance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""(rows, columns) of a float32 margin ``a - θ`` whose sign float32 rounding could have changed.

    Any float32 dot product of n terms, whatever its summation order (with or without FMA), is
    within :math:`\gamma_n \sum_i |w_i x_i|` of the exact one, :math:`\gamma_n = n u / (1 - n u)`;
    rounding the inputs (from float64) and real weights to float32 adds :math:`2u` relative.  So
    :math:`|a_{32} - a| \le \gamma_{n+2} \max|w| \sum_i |x_i|` = ``row_tol`` per row (with room for
    the rounding of the float32 row sum); :math:`\theta` itself is rounded to float32 within
    ``threshold_tol`` :math:`= 8u(|\theta| + 1)`.  A unit is near when its margin is within the sum of both.
    ``distance`` may pass :math:`|m|` in when the caller has it.
    """
    largest = row_tol.max(initial=0)
    overflow = None
    if not np.isfinite(largest):  # an input beyond float32's range: recompute those rows whole
        overflow = ~np.isfinite(row_tol)
        row_tol[overflow] = 0
        largest = row_tol.max(initial=0)
    # One coarse test with the chunk's largest tolerance, then the exact one on the few candidates.
    dist = np.abs(margin, out=buffer(4, margin.shape, np.float32)) if distance is None else distance
    coarse = np.less_equal(dist, largest + threshold_tol_max, out=buffer(5, margin.shape, np.bool_))
    if overflow is not None:
        coarse[overflow] = True
    rows, cols = np.divmod(np.flatnonzero(coarse.ravel()), margin.shape[1])
    if len(rows):
        keep = dist[rows, cols] - row_tol[rows] <= threshold_tol[cols]
        if overflow is not None:
            keep |= overflow[rows]
        rows, cols = rows[keep], cols[keep]
    return rows, cols
