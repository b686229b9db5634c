r"""The compiled forward kernel (``bnnmip/_kernel.c``): every unit decided in exact integer arithmetic.

:meth:`bnnmip.network.BNN.logits` hands a batch to :class:`Kernel` first; the rows it flags, and
every row when the library is not built or the network has real weights, go to the float path
(:mod:`bnnmip.fused`).  The module is C (its network description a ctypes structure built here; the GIL is
released while it runs), built by ``pip install`` (``pyproject.toml``) when a C compiler is there.

**±1 layers on bits.**  A ±1 input :math:`h` travels as its bits :math:`b = (h + 1)/2`, so with
:math:`r_j = \sum_i w_{ji}`, :math:`a_j = 2 B_j - r_j` for :math:`B_j = \sum_i w_{ji} b_i` (an int8 x uint8
dot product, exact in int32), and :math:`a_j \ge \theta_j \iff B_j \ge c_j = \lceil (\theta_j + r_j)/2 \rceil`.

**Input binarization.**  :math:`z_j = [d_j x_j \ge \theta_j]`, compared in float64 on the input as given
(float32 or float64): exact.  A NaN or infinite input flags its row (the float path raises).

**Real inputs, ±1 first layer.**  With :math:`F = 255 / hi` (a float32), an input row becomes grid indices
:math:`q_i = \mathrm{clamp}(\mathrm{rint}(y_i), 0, 255)`, :math:`y_i = \mathrm{fl}_{32}(F x_i)`, and
:math:`A_j = \sum_i w_{ji} q_i` is exact.  Since :math:`F a_j = A_j + \sum_i w_{ji} (F x_i - q_i)`,

.. math::  |F a_j - A_j| \le \max|w| \textstyle\sum_i |F x_i - q_i|
           \le \max|w| \big(\sum_i |y_i - q_i| + 2.001\,u \sum_i |y_i| + n F 2^{-149}\big) = \tau

(:math:`u = 2^{-24}`: the rounding of :math:`F x` in float32, and of a float64 input to float32;
:math:`2^{-149}`: underflow; the kernel sums in float32 partial sums and pads for their rounding).
The unit decides :math:`A_j > T_j = \mathrm{fl}_{64}(F \theta_j)`, the sign of :math:`F (a_j - \theta_j)`
whenever :math:`|A_j - T_j| > \tau + \epsilon_j` (:math:`\epsilon_j` the rounding of :math:`T_j`).  Inputs on
the grid :math:`k\,hi/255` give :math:`\tau \approx 0.005` (integer units), so a row is flagged only when a
unit's :math:`A_j` meets :math:`T_j` (well under one row in a hundred on images); inputs off the grid
give :math:`\tau` of tens to hundreds, and most of their rows are flagged: after :data:`MISSES` calls in a
row whose rows were mostly flagged, calls go straight to the float path but for every :data:`RETRY`-th.

As with the float path, every decision is exact in real arithmetic; :meth:`~bnnmip.network.BNN.forward`
computes its products in float64, so the two can differ only for a pre-activation within float64
rounding (about 1e-13) of its threshold.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

MISSES = 3  # calls in a row with their rows mostly flagged, after which the kernel is skipped ...
RETRY = 8  # ... except every RETRY-th call, which tries it again
_STRIDE = 64  # fan-ins are padded to a multiple of this (whole vectors in the dot products)
_U32 = 2.0**-24

_c_int8_p = ctypes.POINTER(ctypes.c_int8)
_c_int32_p = ctypes.POINTER(ctypes.c_int32)
_c_double_p = ctypes.POINTER(ctypes.c_double)


class _Net(ctypes.Structure):
    """``bnn_t`` of ``_kernel.c``."""

    _fields_ = [
        ("depth", ctypes.c_int32), ("n_inputs", ctypes.c_int32), ("binarized", ctypes.c_int32),
        ("n_classes", ctypes.c_int32), ("width", _c_int32_p), ("stride", _c_int32_p),
        ("packed", ctypes.POINTER(_c_int8_p)),
        ("cut", ctypes.POINTER(_c_int32_p)),
        ("target", _c_double_p), ("slack", _c_double_p), ("factor", ctypes.c_double),
        ("tolerance_scale", ctypes.c_double), ("tolerance_floor", ctypes.c_double),
        ("direction", _c_int8_p), ("ib_threshold", _c_double_p),
        ("out_weight", _c_double_p), ("out_bias", _c_double_p),
    ]


def _library():
    """The compiled function ``logits(net, x, is_double, out, flags)``, or None when it was not built or
    has no forward pass for this CPU (it needs AVX2 or AVX-512 VNNI, and GCC on x86-64)."""
    try:
        from ._kernel import instruction_set, logits
    except ImportError:
        return None
    return logits if instruction_set() != "none" else None


def available() -> bool:
    """Whether the compiled kernel is built (``pip install`` builds it when a C compiler is there)."""
    return _library() is not None


def describe() -> str:
    """The kernel's state in a few words, for benchmark headers: built or not, and its instruction set."""
    try:
        from ._kernel import instruction_set
    except ImportError:
        return "compiled kernel not built"
    return f"compiled kernel ({instruction_set()})"


def supports(net) -> bool:
    """Whether the kernel computes ``net``: ±1 weights everywhere, and real inputs (if not binarized)
    with a positive upper bound (the grid :math:`k\\,hi/255`)."""
    if not all(layer.binary_weights and np.abs(layer.weight).max(initial=0) <= 1 for layer in net.layers):
        return False
    hi = net.input_range[1]
    return net.input_binarization is not None or (0 < hi < math.inf and net.n_inputs * 255 * 128 < 2**31)


def _padded(weight: np.ndarray) -> np.ndarray:
    stride = -(-weight.shape[1] // _STRIDE) * _STRIDE
    out = np.zeros((weight.shape[0], stride), np.int8)
    out[:, : weight.shape[1]] = weight
    return out


def _packed(padded: np.ndarray) -> np.ndarray:
    """A padded (width, stride) matrix as [stride / 4][width padded to 16][4]: the four weights of a unit
    that one byte-product instruction sums, side by side."""
    width, stride = padded.shape
    units = -(-width // 16) * 16
    out = np.zeros((stride // 4, units, 4), np.int8)
    out[:, :width] = padded.reshape(width, stride // 4, 4).transpose(1, 0, 2)
    return out


def _bit_cuts(layer) -> np.ndarray:
    r""":math:`c_j = \lceil (\theta_j + r_j)/2 \rceil` (int32), clipped to the sums bits can reach."""
    rowsum = layer.weight.sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        c = np.ceil((layer.threshold + rowsum) / 2)
    bound = layer.fan_in + 1
    return np.clip(np.nan_to_num(c, nan=bound, posinf=bound, neginf=-bound), -bound, bound).astype(np.int32)


class Kernel:
    """The compiled kernel's view of a network (arrays kept alive here).  Build with :meth:`of`."""

    def __init__(self, net, lib):
        self._lib = lib
        self._misses = 0  # calls in a row with their rows mostly flagged (races only blur the count)
        ib = net.input_binarization
        self.binarized = ib is not None
        self._keep = []  # every array the C structure points into
        weights = [_padded(layer.weight) for layer in net.layers]
        cuts = [None if (i == 0 and not self.binarized) else self._keep_array(_bit_cuts(layer))
                for i, layer in enumerate(net.layers)]
        s = _Net(depth=net.depth, n_inputs=net.n_inputs, binarized=int(self.binarized), n_classes=net.n_classes)
        s.width = self._pointer(np.array(net.widths, np.int32), _c_int32_p)
        s.stride = self._pointer(np.array([w.shape[1] for w in weights], np.int32), _c_int32_p)
        packed = [self._keep_array(_packed(w)) for w in weights]
        s.packed = (_c_int8_p * net.depth)(*[w.ctypes.data_as(_c_int8_p) for w in packed])
        s.cut = (_c_int32_p * net.depth)(*[_c_int32_p() if c is None else c.ctypes.data_as(_c_int32_p)
                                           for c in cuts])
        self._keep += [s.packed, s.cut]
        if self.binarized:
            s.direction = self._pointer(ib.direction.astype(np.int8), _c_int8_p)
            s.ib_threshold = self._pointer(ib.threshold.astype(np.float64), _c_double_p)
        else:
            self._first_layer(s, net)
        classes = -(-net.n_classes // 8) * 8  # CLASS_BLOCK
        out_weight = np.zeros((net.layers[-1].width, classes))
        out_weight[:, : net.n_classes] = net.out_weight.T
        s.out_weight = self._pointer(out_weight, _c_double_p)
        s.out_bias = self._pointer(np.ascontiguousarray(net.out_bias, np.float64), _c_double_p)
        self._net = s
        self._address = ctypes.addressof(s)
        self._call = lib

    def _first_layer(self, s: _Net, net) -> None:
        """``target``, ``slack``, ``factor`` and the tolerance terms of a real first layer."""
        first = net.layers[0]
        factor = float(np.float32(255 / net.input_range[1]))
        with np.errstate(over="ignore"):
            target = factor * first.threshold
        finite = np.isfinite(target)
        slack = np.where(finite, 2.0**-50 * (np.abs(np.where(finite, target, 0)) + 1), 0.0)
        s.target = self._pointer(target, _c_double_p)
        s.slack = self._pointer(slack, _c_double_p)
        s.factor = factor
        s.tolerance_scale = float(np.abs(first.weight).max(initial=1)) * (1 + 2.0**-40)
        s.tolerance_floor = net.n_inputs * factor * 2.0**-149 * s.tolerance_scale

    def _keep_array(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        self._keep.append(array)
        return array

    def _pointer(self, array: np.ndarray, kind):
        return self._keep_array(array).ctypes.data_as(kind)

    @classmethod
    def of(cls, net) -> Kernel | None:
        """The kernel of ``net``, or None (library not built, or a network it does not compute)."""
        lib = _library()
        return cls(net, lib) if lib is not None and supports(net) else None

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray | None:
        """Logits of the rows ``x`` (C-contiguous, 2-D) into ``out`` (C-contiguous float64): the indices of
        the rows left to the float path, or None when the kernel skipped the call (every row is left)."""
        if self._misses >= MISSES:
            self._misses += 1
            if self._misses % RETRY:
                return None
        is_double = x.dtype == np.float64 and self.binarized
        if x.dtype != np.float32 and not is_double:
            with np.errstate(over="ignore"):  # beyond float32: infinite, flagged by the kernel
                x = x.astype(np.float32, order="C")  # a transposed batch stays transposed otherwise
        elif not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        rows = len(x)
        flags = np.empty(rows, np.uint8)
        flagged = self._call(self._address, x, is_double, out, flags)
        if 2 * flagged <= rows:
            self._misses = 0
        elif self._misses < MISSES:
            self._misses += 1
        return np.flatnonzero(flags) if flagged else _NONE


_NONE = np.empty(0, np.intp)
