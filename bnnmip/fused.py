r"""The fast forward pass's kernel: one float32 product and one sign per layer, every decision exact.

Each layer's matrix is stored once, laid out so that one product gives what its units decide on:

.. math::

    x \begin{bmatrix} W_1^\top & 1 \end{bmatrix} = [a_1,\ \textstyle\sum_i x_i],
    \qquad
    [h, 1] \begin{bmatrix} W_l^\top & 0 \\ -(\theta_l - \tfrac12) & 1 \end{bmatrix} = [a_l - \theta_l + \tfrac12,\ 1],

and the logits are :math:`[h_D, 1] \, [A^\top; c]` (float64).  A unit's output is the sign of its
margin (+1 at +0), and the last column of every ±1 layer is the constant 1 the next product needs,
so a layer costs one product and one sign, in arrays kept per thread: at the batch sizes attacks
use (1 to a few hundred rows), numpy's per-call cost is much of the time.  One row is a
matrix-vector product on the transposed matrices (faster for a single vector).

**Exactness.**  On ±1 layers every partial sum is an integer or a half-integer below :math:`2^{24}`:
exact in float32 in any summation order, and :math:`a - \theta + \tfrac12` is never 0.  On the first
layer (real inputs :math:`x \ge 0`) the float32 product of :math:`n` terms is within
:math:`\gamma_n \sum_i |w_i x_i|` of the exact sum in any order, with or without FMA
(:math:`\gamma_n = n u / (1 - n u)`, :math:`u = 2^{-24}`); rounding :math:`x` and :math:`W` to float32 adds
:math:`2u` relative; the last column, computed by the same product, bounds :math:`\sum_i |x_i|`.  With
:math:`g = \gamma_{n+4} \max|w| / (1 - \gamma_{n+4})` and :math:`\tau_j = 8u(|\theta_j| + 1)` (for the float32
threshold), a float32 margin :math:`m = a - \theta` with :math:`|m| > g\,s + \tau_j` (:math:`s` the last
column) has the sign of the exact margin; the few units within that distance (about 0.1 % on images)
are recomputed in float64 (:func:`bnnmip.float32.near_threshold`), as the reference
:meth:`bnnmip.network.BNN.forward` computes them.  Inputs this kernel does not take (negative, NaN,
infinite or beyond float32's range) go to the general path.
"""

from __future__ import annotations

import threading

import numpy as np

from .float32 import near_threshold, unit_signs

_U32 = 2.0**-24  # unit roundoff of float32
_ONE = np.float32(1)
_WORKSPACES = 4  # per thread: the row counts most recently seen (attacks reuse a few batch sizes)


class FusedForward:
    """The laid-out matrices of a network without input binarization (see the module docstring).

    Build with :meth:`of`; calling it computes the logits of a chunk of rows in per-thread arrays.
    """

    def __init__(self, net):
        first = net.layers[0]
        n, width = first.fan_in, first.width
        top = np.ones((n, width + 1), np.float32)
        top[:, :width] = first.weight.T
        self.matrices = [top]
        for layer in net.layers[1:]:
            m = np.zeros((layer.fan_in + 1, layer.width + 1), np.float32)
            m[:-1, :-1] = layer.weight.T
            m[-1, :-1] = -(layer.threshold - 0.5)
            m[-1, -1] = 1
            self.matrices.append(m)
        self.output = np.vstack([net.out_weight.T, net.out_bias[None, :]]).astype(np.float64)
        self.transposed = [np.ascontiguousarray(m.T) for m in self.matrices]
        self.output_t = np.ascontiguousarray(self.output.T)
        self.weight_rows = first._weight_rows  # float64, shared with the general path
        self.threshold = first.threshold
        self.threshold32 = first.threshold.astype(np.float32)
        gamma = (n + 4) * _U32 / (1 - (n + 4) * _U32)
        self.row_gamma = gamma * float(np.abs(first.weight).max(initial=0)) / (1 - gamma)
        finite = np.isfinite(first.threshold)
        size = np.abs(np.where(finite, first.threshold, 0))
        self.threshold_tol = np.where(finite, 8 * _U32 * (size + 1), 0).astype(np.float32)
        self.threshold_tol_max = float(self.threshold_tol.max(initial=0))
        self._local = threading.local()

    @classmethod
    def of(cls, net) -> FusedForward | None:
        """The kernel of ``net`` (a :class:`~bnnmip.network.BNN`); None with input binarization."""
        if net.input_binarization is not None or net.layers[0].integer:
            return None
        return cls(net)

    def _workspace(self, rows: int) -> _Workspace:
        spaces = getattr(self._local, "spaces", None)
        if spaces is None:
            spaces = self._local.spaces = {}
        space = spaces.get(rows)
        if space is None:
            if len(spaces) >= _WORKSPACES:
                del spaces[next(iter(spaces))]
            space = spaces[rows] = _Workspace(self, rows)
        return space

    def __call__(self, x: np.ndarray, out: np.ndarray) -> bool:
        """Logits of the rows ``x`` (float32 or float64) into ``out``; False if ``x`` is not for this kernel."""
        rows = len(x)
        if rows == 0:
            return True
        space = self._workspace(rows)
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            with np.errstate(over="ignore"):  # beyond float32: infinite here, refused below
                np.copyto(space.x, x)
            x32 = space.x
        else:
            x32 = x
        if not x32.min() >= 0:  # a negative input, or NaN
            return False
        if rows == 1:
            return self._one(space, x32[0], x, out)
        m = _product(x32, self.matrices[0], space.layers[0], space.partial[0])
        s = m[:, -1]
        largest = float(s.max())
        if not largest < np.inf:  # an infinite input, or one beyond float32's range
            return False
        margin = m[:, :-1]
        margin -= self.threshold32
        distance = np.abs(margin, out=space.distance)
        if not distance.min() > largest * self.row_gamma + self.threshold_tol_max:
            near, cols = near_threshold(margin, s * np.float32(self.row_gamma), self.threshold_tol,
                                        self.threshold_tol_max, distance)
            margin[near, cols] = self._exact_signs(x[near], cols)
        _signs(m)
        s[:] = 1
        for i in range(1, len(self.matrices)):
            m = _signs(_product(m, self.matrices[i], space.layers[i], space.partial[i]))
        np.dot(m, self.output, out=out)
        return True

    def _one(self, space: _Workspace, x32: np.ndarray, x: np.ndarray, out: np.ndarray) -> bool:
        """:meth:`__call__` for one row: matrix-vector products on the transposed matrices."""
        m = np.dot(self.transposed[0], x32, out=space.vectors[0])
        s = float(m[-1])
        if not s < np.inf:
            return False
        margin = m[:-1]
        margin -= self.threshold32
        distance = np.abs(margin, out=space.distance[0])
        if not distance.min() > s * self.row_gamma + self.threshold_tol_max:
            cols = np.flatnonzero(distance <= self.threshold_tol + np.float32(s * self.row_gamma))
            exact = self.weight_rows[cols] @ x[0].astype(np.float64, copy=False)
            margin[cols] = np.where(exact >= self.threshold[cols], _ONE, -_ONE)
        m[-1] = 1
        for weight, nxt in zip(self.transposed[1:], space.vectors[1:]):
            np.copysign(_ONE, m, out=m)
            m = np.dot(weight, m, out=nxt)
        np.dot(self.output_t, np.copysign(_ONE, m, out=space.last), out=out[0])
        return True

    def _exact_signs(self, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """±1 of the first layer's units ``cols`` on the rows ``x`` (one each), decided in float64 as
        :meth:`~bnnmip.network.BNN.forward` decides them (``a >= θ``; not the sign bit of ``a - θ``,
        which ``-0.0 - 0.0`` sets)."""
        exact = np.add.reduce(x.astype(np.float64) * self.weight_rows[cols], axis=1)
        return np.where(exact >= self.threshold[cols], _ONE, -_ONE)


# OpenBLAS multiplies small matrices (rows x columns x inner <= 1e6) with a kernel that does not
# pack them first: up to a few dozen rows, summing such products over slices of the inner
# dimension is faster than one product (measured: 20-50 % at 4-16 rows on 784-input layers).
_SMALL_PRODUCT = 1_000_000
_SPLIT_ROWS = 24
_SIGN_BITS = 4096  # from this many values, two integer passes beat np.copysign's loop


def _product(x: np.ndarray, weight: np.ndarray, out: np.ndarray, partial: np.ndarray) -> np.ndarray:
    """``x @ weight`` into ``out`` (float32), in slices of the inner dimension for small batches."""
    rows, inner = x.shape
    size = rows * inner * weight.shape[1]
    if rows > _SPLIT_ROWS or size <= _SMALL_PRODUCT:
        return np.dot(x, weight, out=out)
    step = -(-inner // -(-size // _SMALL_PRODUCT))
    np.dot(x[:, :step], weight[:step], out=out)
    for start in range(step, inner, step):
        out += np.dot(x[:, start : start + step], weight[start : start + step], out=partial)
    return out


def _signs(m: np.ndarray) -> np.ndarray:
    """``m`` overwritten by ±1 with its sign (+1 at +0)."""
    return unit_signs(m) if m.size >= _SIGN_BITS else np.copysign(_ONE, m, out=m)


class _Workspace:
    """One thread's arrays for chunks of ``rows`` rows: float32 inputs, every layer's output (and its
    1-D view for one row), the distances to the first layer's thresholds, the last layer in float64."""

    def __init__(self, fused: FusedForward, rows: int):
        first = fused.matrices[0]
        self.x = np.empty((rows, first.shape[0]), np.float32)
        self.layers = [np.empty((rows, m.shape[1]), np.float32) for m in fused.matrices]
        self.partial = [np.empty_like(layer) for layer in self.layers]
        self.vectors = [layer[0] for layer in self.layers]
        self.distance = np.empty((rows, first.shape[1] - 1), np.float32)
        self.last = np.empty(fused.matrices[-1].shape[1], np.float64)
