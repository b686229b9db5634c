r"""The layered integer representation of a binarized neural network, and its exact forward pass.

Every binary unit is written in one *threshold form*: it is +1 exactly when its pre-activation
reaches its threshold,

.. math::  h_j = +1 \iff a_j \ge \theta_j, \qquad h_j = -1 \text{ otherwise}.

* :class:`InputBinarization` (optional): :math:`a_j = d_j x_j` with :math:`d_j \in \{\pm1\}`.
* :class:`Layer` number 1: :math:`a = W_1 x` (real inputs; ``integer=False``) or :math:`a = W_1 z`
  (after input binarization; ``integer=True``).
* Layers 2..D: :math:`a = W_l h_{l-1}` with :math:`W_l \in \{\pm1\}` (int8).  The pre-activation is an
  integer of the parity of the fan-in :math:`r`, so thresholds are integers of that parity and
  :math:`h_j = -1 \iff a_j \le \theta_j - 2`: no floating-point tolerance at all.
* Output: :math:`\text{logits} = A h_D + c` (real).

Batch norm is folded into the thresholds; a negative BN scale is written by negating the weight
row, so :attr:`Layer.scale` (the BN scale :math:`|\gamma| / \sqrt{\sigma^2+\epsilon}`, used by the
PGD surrogate :math:`\mathrm{hardtanh}(s_j (a_j - \theta_j))`) is never negative.  A constant
neuron (:math:`\gamma = 0`) has a threshold no pre-activation can miss (or reach).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import InvalidArgumentError
from .float32 import near_threshold, row_abs_sum, unit_signs
from .threads import single_threaded_blas

_U32 = 2.0**-24  # unit roundoff of float32
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _check_finite(X: np.ndarray, name: str) -> None:
    if not np.isfinite(X).all():
        raise InvalidArgumentError(f"{name}: contains NaN or infinite values")


@dataclass(frozen=True, eq=False)
class InputBinarization:
    r"""Sign of batch norm on the raw input: :math:`z_j = +1 \iff d_j x_j \ge \theta_j`.

    ``threshold`` is :math:`d_j t_j` for the raw threshold :math:`t_j`; ±inf marks a constant bit.
    """

    direction: np.ndarray  # (n,) int8, ±1
    threshold: np.ndarray  # (n,) float64
    scale: np.ndarray  # (n,) float64 >= 0 (0 for a constant bit)

    @property
    def width(self) -> int:
        return len(self.threshold)

    def pre_activation(self, x: np.ndarray) -> np.ndarray:
        return x * self.direction


@dataclass(frozen=True, eq=False)
class Layer:
    r"""A fully connected sign layer in threshold form: :math:`h = +1 \iff W\,\mathrm{in} \ge \theta`.

    ``integer`` layers take ±1 inputs and ±1 weights; their thresholds are integers with the
    parity of the fan-in.  ``sign_ties[j]`` marks a neuron where the ONNX graph computes
    ``Sign(0) = 0`` at :math:`a_j = \theta_j`; the representation says +1 there (the convention
    of BNN training), and :func:`bnnmip.check_onnx` reports inputs that reach such a tie.
    """

    weight: np.ndarray  # (m, n) int8 ±1, or float64 for a real-valued first layer
    threshold: np.ndarray  # (m,) float64
    scale: np.ndarray  # (m,) float64 >= 0 (0 for a constant unit)
    integer: bool
    sign_ties: np.ndarray = field(default=None)  # (m,) bool

    def __post_init__(self):
        if self.sign_ties is None:
            object.__setattr__(self, "sign_ties", np.zeros(len(self.threshold), bool))

    @property
    def width(self) -> int:
        return self.weight.shape[0]

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    @property
    def binary_weights(self) -> bool:
        return self.weight.dtype == np.int8

    def pre_activation(self, inp: np.ndarray) -> np.ndarray:
        """Exact pre-activation ``inp @ W.T`` of a batch (int32 for ±1 inputs, else float64)."""
        if self.integer:
            # ±1 products sum to integers far below 2**24 in magnitude: float32 is exact.
            return (inp.astype(np.float32) @ self._weight_f32).astype(np.int32)
        return inp @ self._weight_f64

    def signs(
        self, inp: np.ndarray, inp64: np.ndarray | None = None, out: np.ndarray | None = None,
        abs_sum: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""The ±1 outputs (float32) of a float32 batch ``inp``, deciding exactly as :meth:`pre_activation`.

        The product runs in float32, like onnxruntime's, into ``out`` if given (shape (n, width)).

        * ±1 inputs: every partial sum is an integer below :math:`2^{24}`, so the float32 product
          is exact; :math:`a - (\theta - \tfrac12)` is never zero and its sign is the decision.
          (Bit-packed XNOR-popcount with ``np.bitwise_count`` is no faster in numpy: 0.9 to 1.3
          times this product's time on the zoo's hidden layers, see ``benchmarks/forward.py``.)
        * real inputs (``inp`` possibly rounded from ``inp64``): units whose float32 margin
          :math:`a - \theta` is within the worst-case rounding error (see :meth:`_near_threshold`)
          are recomputed in float64 from ``inp64`` (or ``inp``); on images that is about 0.1 %
          of the units.  ``abs_sum`` may pass the row sums :math:`\sum_i |x_i|` (float32) in.
        """
        a = np.matmul(inp, self._weight_f32, out=out)
        if self.integer:
            a -= self._threshold_half
            return unit_signs(a)
        a -= self._threshold_f32
        rows, cols = self._near_threshold(a, row_abs_sum(inp) if abs_sum is None else abs_sum)
        unit_signs(a)  # the sign of a margin of ±0 is arbitrary here, but such a unit is near
        if len(rows):
            source = inp if inp64 is None else inp64
            exact = np.einsum("ij,ij->i", source[rows].astype(np.float64), self._weight_rows[cols])
            a[rows, cols] = np.where(exact >= self.threshold[cols], np.float32(1), np.float32(-1))
        return a

    def _near_threshold(self, margin: np.ndarray, abs_sum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of a float32 margin ``a - θ`` whose sign float32 rounding could have changed
        (see :func:`bnnmip.float32.near_threshold`)."""
        return near_threshold(margin, abs_sum * self._row_gamma, self._threshold_tol, self._threshold_tol_max)

    @cached_property
    def _row_gamma(self) -> np.float32:
        n = self.fan_in + 2
        return np.float32(n * _U32 * self._max_abs_weight / (1 - 2 * n * _U32))

    @cached_property
    def _threshold_tol_max(self) -> np.float32:
        return self._threshold_tol.max(initial=0)

    @cached_property
    def _threshold_tol(self) -> np.ndarray:
        # An infinite threshold (a constant unit) decides every input the same way: no tolerance.
        finite = np.isfinite(self.threshold)
        return np.where(finite, 8 * _U32 * (np.abs(np.where(finite, self.threshold, 0)) + 1), 0).astype(np.float32)

    @cached_property
    def _weight_rows(self) -> np.ndarray:
        return np.ascontiguousarray(self.weight, dtype=np.float64)

    @cached_property
    def _weight_f32(self) -> np.ndarray:
        return np.ascontiguousarray(self.weight.T, dtype=np.float32)

    @cached_property
    def _weight_f64(self) -> np.ndarray:
        return np.ascontiguousarray(self.weight.T, dtype=np.float64)

    @cached_property
    def _threshold_half(self) -> np.ndarray:
        # θ - 1/2 is exact in float32 for the integer thresholds of ±1 layers (|θ| < 2**23).
        return (self.threshold - 0.5).astype(np.float32)

    @cached_property
    def _threshold_f32(self) -> np.ndarray:
        # For integer layers the integer threshold is exact in float32; for real layers the
        # rounding is covered by the tolerance in signs().
        return self.threshold.astype(np.float32)

    @cached_property
    def _max_abs_weight(self) -> float:
        return float(np.abs(self.weight).max(initial=0))


@dataclass(frozen=True)
class Activations:
    """All values of a batched forward pass.

    ``pre[k]`` and ``post[k]`` belong to ``net.threshold_stages[k]`` (the input binarization, if
    any, comes first, then the hidden layers); ``post`` arrays are int8 ±1.
    """

    pre: list[np.ndarray]
    post: list[np.ndarray]
    logits: np.ndarray
    depth: int

    @property
    def hidden(self) -> list[np.ndarray]:
        """The hidden layers' ±1 outputs ``h_1 .. h_D`` (without the input bits)."""
        return self.post[len(self.post) - self.depth :]


@dataclass(frozen=True, eq=False)
class BNN:
    """A binarized neural network in threshold form (see the module docstring).

    Build one with :func:`bnnmip.load_onnx`.  ``levels`` (optional) says that inputs live on the
    grid ``lo + k (hi - lo) / levels``; attacks then perturb on that grid.
    """

    layers: tuple[Layer, ...]
    out_weight: np.ndarray  # (k, m) float64
    out_bias: np.ndarray  # (k,) float64
    input_binarization: InputBinarization | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    levels: int | None = None
    input_shape: tuple[int, ...] = (784,)
    tie_rule: str = "sign(0) = +1"
    source: str | None = None
    origin: object = field(default=None, repr=False)  # OnnxOrigin: the graph onnxruntime reruns

    # ------------------------------------------------------------------ structure
    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int:
        return self.out_weight.shape[0]

    @property
    def widths(self) -> list[int]:
        return [layer.width for layer in self.layers]

    @property
    def threshold_stages(self) -> tuple:
        """The input binarization (if any) followed by the hidden layers."""
        head = (self.input_binarization,) if self.input_binarization is not None else ()
        return head + self.layers

    @property
    def n_params(self) -> int:
        weights = sum(layer.weight.size for layer in self.layers) + self.out_weight.size
        per_unit = sum(len(s.threshold) for s in self.threshold_stages)
        return int(weights + per_unit + self.out_bias.size)

    # ------------------------------------------------------------------ forward
    def as_batch(self, X, name: str = "X", dtype=np.float64, check_finite: bool = True) -> np.ndarray:
        """``X`` as an array (n, n_inputs); accepts (n, *input_shape), (n, n_inputs) or one input.

        Raises :class:`InvalidArgumentError` for a shape that does not fit, non-numbers, and (unless
        ``check_finite`` is false) NaN or infinite values.
        """
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise InvalidArgumentError(f"{name}: expected numbers, got an array of {X.dtype}")
        X = X.astype(dtype, copy=False)
        if X.shape == self.input_shape or X.shape == (self.n_inputs,):
            X = X.reshape(1, -1)
        elif X.ndim >= 2 and X.shape[1:] in (self.input_shape, (self.n_inputs,)):
            X = X.reshape(len(X), self.n_inputs)
        else:
            raise InvalidArgumentError(
                f"{name}: shape {X.shape} does not fit the network's input {self.input_shape} "
                f"(give (n, {self.n_inputs}), (n, {', '.join(map(str, self.input_shape))}) or one input)"
            )
        # One pass without a temporary: a non-finite value makes the sum non-finite; a sum that
        # overflowed is told apart by the full check.
        if check_finite and X.dtype.kind == "f" and not np.isfinite(np.add.reduce(X, axis=None)):
            _check_finite(X, name)
        return X

    def forward(self, X) -> Activations:
        """Exact forward pass of a batch: every pre-activation, every ±1 output and the logits.

        The reference arithmetic: float64 products on a real-valued first layer, integers on ±1
        layers.  :meth:`logits` is the fast path that decides every unit the same way.
        """
        inp = self.as_batch(X)
        pre, post = [], []
        with single_threaded_blas():
            for stage in self.threshold_stages:
                a = stage.pre_activation(inp)
                inp = np.where(a >= stage.threshold, np.int8(1), np.int8(-1))
                pre.append(a)
                post.append(inp)
            logits = inp @ self.out_weight.T + self.out_bias
        return Activations(pre, post, logits, self.depth)

    def logits(self, X) -> np.ndarray:
        """Logits ``A h_D + c`` of a batch (n, n_classes), float64.

        The fast path (:mod:`bnnmip.fastpath`): the compiled integer kernel where it is built and
        the inputs are on the input grid, else float32 products with exact decisions; large
        batches in row chunks on :func:`~bnnmip.threads.n_threads` threads.  It decides every unit
        as :meth:`forward` does (up to float64 rounding on a real layer, i.e. for pre-activations
        within about 1e-13 of a threshold); float32 inputs are taken as they are, others are read
        in float64.
        """
        X = np.asarray(X)
        if X.dtype not in _FLOATS or X.shape[1:] not in (self._flat_shape, self.input_shape):
            # NaN and inf are caught chunk by chunk, not in a pass of their own.
            X = self.as_batch(X, dtype=np.float32 if X.dtype == np.float32 else np.float64, check_finite=False)
        elif X.ndim != 2:
            X = X.reshape(len(X), -1)
        out = np.empty((len(X), self.n_classes))
        self._fast(X, out)
        return out

    @cached_property
    def _flat_shape(self) -> tuple[int]:
        return (self.n_inputs,)

    @cached_property
    def _fast(self):
        from .fastpath import FastPath  # the engines import nothing of this module

        return FastPath(self)

    @property
    def _fused(self):
        """The fused float32 kernel (:mod:`bnnmip.fused`), None with input binarization."""
        return self._fast.fused

    def predict(self, X) -> np.ndarray:
        """Predicted classes (argmax of the logits, lowest index on ties)."""
        return np.argmax(self.logits(X), axis=1)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """A readable description: layers, widths, weights, thresholds, grid and tie rule."""
        lo, hi = self.input_range
        grid = f", grid of {self.levels} steps" if self.levels else ""
        lines = [
            f"BNN{f' from {self.source}' if self.source else ''}",
            f"  input      {self.n_inputs} values {self.input_shape} in [{lo:g}, {hi:g}]{grid}",
        ]
        ib = self.input_binarization
        if ib is not None:
            constant = int((~np.isfinite(ib.threshold)).sum())
            lines.append(f"  binarize   {ib.width} input bits (sign of batch norm), {constant} constant")
        for i, layer in enumerate(self.layers, 1):
            kind = "±1 weights" if layer.binary_weights else "real weights"
            inputs = "±1 inputs" if layer.integer else "real inputs"
            thr = "integer parity-exact thresholds" if layer.integer else "real thresholds"
            ties = f", {int(layer.sign_ties.sum())} Sign(0) ties" if layer.sign_ties.any() else ""
            lines.append(f"  layer {i:<4} {layer.fan_in} -> {layer.width}, {kind}, {inputs}, {thr}{ties}")
        lines.append(f"  output     {self.out_weight.shape[1]} -> {self.n_classes} logits, real affine")
        lines.append(f"  ties       {self.tie_rule}")
        lines.append(f"  params     {self.n_params:,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        arch = "x".join(map(str, self.widths))
        binarized = ", input binarization" if self.input_binarization is not None else ""
        return f"BNN({self.n_inputs} -> {arch} -> {self.n_classes}{binarized}, {self.tie_rule})"
