r"""Thresholds: the walk's stages become :class:`~bnnmip.network.Layer` s and the input binarization.

A real-valued stage (the input binarization, or a first layer on real inputs) is read in float64:
:math:`\alpha a + \beta \ge 0 \iff d\,a \ge \theta`.  A stage with ±1 inputs is *calibrated* on
onnxruntime instead: the layer's own nodes (from the linear product to the binarizer) run on every
integer pre-activation the layer can see (:mod:`.stage_model`), so the integer thresholds reproduce
onnxruntime's float32 arithmetic exactly, including where ``Sign`` returns 0.  Rows scaled to
±c (fused batch norm, scaled binary weights) are bracketed instead (:mod:`.scaled`).  A real-valued
layer whose rows are ±c keeps ±1 weights too, with c folded into its thresholds.
"""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError
from ...network import InputBinarization, Layer
from .graph import Graph
from .scaled import bracketed_outputs, factor_rows, refuse_mixed_rows
from .stage_model import run_stage
from .walk import Chain, Stage, Tie


def build_stages(chain: Chain, graph: Graph) -> tuple[list[Layer], InputBinarization | None]:
    """The hidden layers and the input binarization (if any) of the chain, with their thresholds.

    Raises
    ------
    UnsupportedModelError
        A binarized layer with weights other than ±1, a unit onnxruntime does not compute as a
        threshold, folded constants that overflow float64, or layers whose widths do not fit.
    """
    binarization, layers = None, []
    for stage in chain.stages:
        if stage.weight is None:
            direction, threshold = real_thresholds(stage.alpha, stage.beta, stage.tie is Tie.MINUS)
            binarization = InputBinarization(direction, threshold, np.abs(stage.alpha))
            continue
        if stage.integer:
            layers.append(calibrated_layer(stage, graph))
        else:
            layers.append(real_layer(stage))
    _check_finite(chain, graph)
    _check_widths(layers, binarization, graph)
    return layers, binarization


def _check_finite(chain: Chain, graph: Graph) -> None:
    for stage in chain.stages:
        if not (np.isfinite(stage.alpha).all() and np.isfinite(stage.beta).all()):
            raise UnsupportedModelError(f"{graph.where(stage.node)}: the folded scale or shift overflows float64")
    if not (np.isfinite(chain.out_weight).all() and np.isfinite(chain.out_bias).all()):
        raise UnsupportedModelError(f"{graph.path}: the output layer's folded weights or bias overflow float64")


def _check_widths(layers: list[Layer], binarization: InputBinarization | None, graph: Graph) -> None:
    for prev, layer in zip([binarization] + layers, layers, strict=False):
        width = prev.width if prev is not None else graph.input_shape
        if prev is not None and layer.fan_in != width:
            raise UnsupportedModelError(f"{graph.path}: a layer of fan-in {layer.fan_in} follows {width} units")


def real_thresholds(alpha: np.ndarray, beta: np.ndarray, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    r"""Directions d and thresholds θ with :math:`\alpha a + \beta \ge 0 \iff d\,a \ge θ` (``> 0`` if strict)."""
    direction = np.where(alpha < 0, -1, 1).astype(np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        threshold = np.where(alpha != 0, -beta / np.abs(alpha), 0.0)
    if strict:
        threshold = np.nextafter(threshold, np.inf)
    constant_on = (beta > 0) | ((beta == 0) & (not strict))
    threshold = np.where(alpha == 0, np.where(constant_on, -np.inf, np.inf), threshold)
    return direction, threshold


def real_layer(stage: Stage) -> Layer:
    r"""A layer on real inputs, read in float64; rows ±c keep ±1 weights (:math:`\alpha c\,(S x)`)."""
    weight, alpha = stage.weight, stage.alpha
    rows = factor_rows(weight)
    if rows is not None:
        weight, alpha = rows[0], alpha * rows[1]
    direction, threshold = real_thresholds(alpha, stage.beta, stage.tie is Tie.MINUS)
    weight = weight * direction[:, None]
    if np.all(np.abs(weight) == 1):
        weight = weight.astype(np.int8)
    return Layer(weight, threshold, np.abs(alpha), integer=False)


def calibrated_layer(stage: Stage, graph: Graph) -> Layer:
    """Integer thresholds read off onnxruntime on every pre-activation value the layer can take.

    Weights ±1 on unscaled ±1 inputs: the products are exact integers, fed to the layer's nodes.
    Rows ±c: the products are bracketed (:func:`.scaled.bracketed_outputs`), and a pre-activation
    where rounding may decide either way becomes the unit's threshold, reported as a tie.
    """
    rows = factor_rows(stage.weight)
    if rows is None:
        raise refuse_mixed_rows(stage, graph)
    signs, c = rows
    m, r = stage.weight.shape
    values = np.arange(-r, r + 1, 2, dtype=np.float64)  # the fan-in's parity
    if np.all(c == 1):
        out = run_stage(stage, graph, np.repeat(values[:, None], m, axis=1))
    else:
        out, _ = bracketed_outputs(stage, graph, c, values)
    slope = stage.alpha * np.where(c > 0, 1.0, 0.0)
    direction, threshold, sign_ties = read_thresholds(out, values, slope < 0, graph.where(stage.node))
    weight = (signs * direction[:, None]).astype(np.int8)
    return Layer(weight, threshold, np.abs(stage.alpha) * c, integer=True, sign_ties=sign_ties)


def read_thresholds(out: np.ndarray, values: np.ndarray, negative: np.ndarray,
                    where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directions, integer thresholds and tie flags from the outputs ``out`` (values × units).

    ``out[k, j]`` is unit j's output at pre-activation ``values[k]`` (0 where the graph outputs
    ``Sign(0)``, or may decide either way); ``negative`` orients constant units.  A unit is +1 iff
    ``direction * a >= threshold``; ``sign_ties`` marks a 0 at the threshold.
    """
    m, r = out.shape[1], values[-1]
    on = out >= 0
    rising = np.all(on[1:] >= on[:-1], axis=0)
    falling = np.all(on[1:] <= on[:-1], axis=0)
    constant = on.all(axis=0) | (~on).all(axis=0)
    if np.any(~(rising | falling)):
        j = int(np.flatnonzero(~(rising | falling))[0])
        raise UnsupportedModelError(f"{where}: unit {j} is not a threshold of its pre-activation in onnxruntime")
    if np.any((out == 0).all(axis=0)):
        j = int(np.flatnonzero((out == 0).all(axis=0))[0])
        raise UnsupportedModelError(f"{where}: unit {j} always outputs Sign(0) = 0, not ±1")
    # Orientation: rising units keep their row, falling ones negate it (a' = -a).
    flip = falling & ~rising | (constant & negative)
    direction = np.where(flip, -1, 1)
    on_oriented = np.where(flip[None, :], on[::-1], on)  # indexed by a' = -r + 2k
    first_on = np.argmax(on_oriented, axis=0)
    threshold = np.where(on_oriented.any(axis=0), values[first_on], r + 2.0)
    out_oriented = np.where(flip[None, :], out[::-1], out)
    at_threshold = out_oriented[np.minimum(first_on, len(values) - 1), np.arange(m)]
    sign_ties = on_oriented.any(axis=0) & (at_threshold == 0)
    zeros_elsewhere = (out == 0).sum(axis=0) > sign_ties
    if np.any(zeros_elsewhere):
        j = int(np.flatnonzero(zeros_elsewhere)[0])
        raise UnsupportedModelError(f"{where}: unit {j} outputs 0 at several pre-activations")
    return direction, threshold.astype(np.float64), sign_ties
