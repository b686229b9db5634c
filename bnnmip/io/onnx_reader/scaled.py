r"""Binarized layers whose weight rows are scaled: :math:`W = \mathrm{diag}(c)\,S`, :math:`S \in \{\pm1\}`.

torch's dynamo exporter fuses batch norm into the weights of a layer whose ``Sign(W)`` it folds
(rows :math:`\pm c_j` plus a bias); Brevitas scales binary weights (:math:`\pm 0.1`); a QONNX
activation may output :math:`\pm s`.  The unit then sees :math:`P_j = c_j a_j` with the integer
:math:`a_j = S_j h` of the fan-in's parity, and bnnmip keeps :math:`S` and folds :math:`c_j` into
the unit's scale.

**What onnxruntime computes.** It sums the float32 terms :math:`\pm c_j` in an order (and with
fused multiply-adds) of its own choosing, so its product is :math:`c_j a_j` only up to rounding.
For any order, every term passes through at most :math:`n = K + 4` roundings (:math:`K - 1`
additions, its product, Gemm's :math:`\alpha`, :math:`\beta C` and its addition), so the computed
:math:`\hat Y` of :math:`Y = \alpha c_j a_j + \beta C_j` satisfies (Higham, *Accuracy and Stability
of Numerical Algorithms*, §3.1)

.. math::  |\hat Y - Y| \le E = \gamma_n \Big(|\alpha| \sum_i |W_{ji}| + |\beta C_j|\Big),
           \qquad \gamma_n = \frac{n u}{1 - n u},

with :math:`u` the unit roundoff.  The layer's nodes after the product (bias, batch norm, the
binarizer) are elementwise and monotone in their input, so running them in onnxruntime on the two
float32 ends of :math:`[Y - 2E, Y + 2E]` (a margin of 2) brackets every output onnxruntime can
give at :math:`a_j`.  Equal ends decide the unit there, exactly; unequal ends mean the unit's
threshold lies within rounding of :math:`c_j a_j`: that pre-activation is *uncertain*, read as
the threshold (+1) and reported like a ``Sign(0)`` tie, so ``check_onnx`` and the adversarial
re-check know onnxruntime may decide either way there.  A unit uncertain at two pre-activations
is refused.  With :math:`c_j = 1` and unscaled inputs the sums are exact integers and the plain
calibration of :mod:`.calibrate` applies.
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError
from .graph import Graph
from .stage_model import run_stage
from .walk import Stage


def factor_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(S, c)`` with ``weight = c[:, None] * S``, S int8 ±1 and c >= 0; None if a row mixes magnitudes.

    A zero row gets ``c = 0`` (a constant unit) and ``S = +1``.
    """
    magnitude = np.abs(weight)
    c = magnitude.max(axis=1, initial=0.0)
    if not np.all(magnitude == c[:, None]):
        return None
    return np.where(weight < 0, -1, 1).astype(np.int8), c


def refuse_mixed_rows(stage: Stage, graph: Graph) -> UnsupportedModelError:
    """The error for a binarized layer whose rows are not ±c (names the node and a bad weight)."""
    magnitude = np.abs(stage.weight)
    j = int(np.flatnonzero(~np.all(magnitude == magnitude.max(axis=1, keepdims=True), axis=1))[0])
    row = stage.weight[j]
    bad = row[np.abs(row) != 1][0] if np.any(np.abs(row) != 1) else row[0]
    return UnsupportedModelError(
        f"{graph.where(stage.node)}: weights of a binarized layer must be ±1, found {bad:g} (row {j} mixes "
        f"magnitudes {np.unique(np.abs(row))[:3].tolist()}; bnnmip also reads rows ±c, as torch writes them "
        "when it fuses batch norm into the weights)"
    )


def bracketed_outputs(stage: Stage, graph: Graph, c: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The binarizer's outputs at every pre-activation ``values`` (rows) of every unit (columns).

    Returns ``(out, uncertain)``: ``out`` is -1 / 0 / +1 where onnxruntime's output is decided
    (0 only where it computes ``Sign(0)``) and 0 where it is not; ``uncertain`` marks the latter.
    """
    ga, gb, bias = 1.0, 0.0, np.zeros(len(c))
    if stage.gemm is not None:
        ga, gb = stage.gemm.alpha, stage.gemm.beta
        if stage.gemm.bias is not None:
            bias = np.broadcast_to(np.asarray(stage.gemm.bias, np.float64).reshape(-1), len(c))
    fan_in = stage.weight.shape[1]
    u = float(np.finfo(graph.dtype).eps) / 2
    n = fan_in + 4
    if n * u >= 0.5:
        raise UnsupportedModelError(f"{graph.where(stage.node)}: fan-in {fan_in} is too large to bound the rounding")
    magnitude = abs(ga) * np.abs(stage.weight).sum(axis=1) + np.abs(gb * bias)
    center = ga * c[None, :] * values[:, None] + (gb * bias)[None, :]
    error = 2 * (n * u / (1 - n * u)) * magnitude[None, :] + 2.0**-50 * (magnitude[None, :] + np.abs(center))
    low, high = _round_down(center - error, graph.dtype), _round_up(center + error, graph.dtype)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise UnsupportedModelError(f"{graph.where(stage.node)}: the layer's sums overflow {np.dtype(graph.dtype)}")
    both = run_stage(stage, graph, np.concatenate([low, high]), at_output=True)
    out_low, out_high = both[: len(values)], both[len(values):]
    uncertain = out_low != out_high
    twice = uncertain.sum(axis=0) > 1
    if np.any(twice):
        j = int(np.flatnonzero(twice)[0])
        raise UnsupportedModelError(
            f"{graph.where(stage.node)}: unit {j}: float32 rounding of the sums of ±{c[j]:.6g} may decide it "
            "either way at several pre-activations; bnnmip cannot read it exactly"
        )
    return np.where(uncertain, 0.0, out_low), uncertain


def _round_down(x: np.ndarray, dtype: type) -> np.ndarray:
    """The largest value of ``dtype`` at most ``x`` (float64 → float32/64), as float64."""
    y = x.astype(dtype)
    y = np.where(y.astype(np.float64) > x, np.nextafter(y, dtype(-np.inf)), y)
    return y.astype(np.float64)


def _round_up(x: np.ndarray, dtype: type) -> np.ndarray:
    y = x.astype(dtype)
    y = np.where(y.astype(np.float64) < x, np.nextafter(y, dtype(np.inf)), y)
    return y.astype(np.float64)


def exact_sum_rows(weight: np.ndarray) -> np.ndarray:
    r"""Output-layer rows ±c with c rounded so that bnnmip's float64 sums over ±1 inputs are exact.

    With ±1 output weights and one scale for all classes (Brevitas' TensorNorm, Larq's batch norm),
    two classes with the same count :math:`S_j h` tie exactly in the graph's arithmetic; float64
    sums of :math:`\pm c` with a 53-bit :math:`c` round differently per row and would break such a
    tie.  Rounding :math:`c` to :math:`53 - \lceil \log_2(K + 1) \rceil` significant bits (a relative
    change below :math:`2^{-40}` for fan-ins up to 4,096) makes every partial sum exact, in any order,
    so equal counts give equal logits.  Rows that are not ±c are returned unchanged.
    """
    rows = factor_rows(weight)
    if rows is None or weight.shape[1] == 0:
        return weight
    signs, c = rows
    bits = 53 - int(np.ceil(np.log2(weight.shape[1] + 1)))
    mantissa, exponent = np.frexp(c)
    c = np.ldexp(np.round(np.ldexp(mantissa, bits)), exponent - bits)
    return c[:, None] * signs
