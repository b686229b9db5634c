r"""Thresholds: the walk's stages become :class:`~bnnmip.network.Layer` s and the input binarization.

A real-valued stage (the input binarization, or a first layer on real inputs) is read in float64:
:math:`\alpha a + \beta \ge 0 \iff d\,a \ge \theta`.  A stage with ±1 inputs is *calibrated* on
onnxruntime instead: the layer's own nodes (from the linear product to the binarizer) run on every
integer pre-activation the layer can see, so the integer thresholds reproduce onnxruntime's float32
arithmetic exactly, including where ``Sign`` returns 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedModelError
from ...network import InputBinarization, Layer
from ..runtime import new_session
from .graph import Graph
from .ops import Op
from .walk import Chain, GemmScale, Stage, Tie

_PRODUCT = "__bnnmip_product"  # the calibration input of a Gemm: its product, before alpha and C
_SCALED = "__bnnmip_scaled"


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
            if not np.all(np.abs(stage.weight) == 1):
                bad = stage.weight[np.abs(stage.weight) != 1].reshape(-1)[0]
                raise UnsupportedModelError(
                    f"{graph.where(stage.node)}: weights of a binarized layer must be ±1, found {bad:g}"
                )
            layers.append(calibrated_layer(stage, graph))
        else:
            direction, threshold = real_thresholds(stage.alpha, stage.beta, stage.tie is Tie.MINUS)
            weight = stage.weight * direction[:, None]
            if np.all(np.abs(weight) == 1):
                weight = weight.astype(np.int8)
            layers.append(Layer(weight, threshold, np.abs(stage.alpha), integer=False))
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


def calibrated_layer(stage: Stage, graph: Graph) -> Layer:
    """Integer thresholds read off onnxruntime on every pre-activation value the layer can take."""
    m, r = stage.weight.shape
    values = np.arange(-r, r + 1, 2, dtype=np.float64)  # the fan-in's parity
    out = _run_stage(stage, graph, np.repeat(values[:, None], m, axis=1))
    on = out >= 0
    rising = np.all(on[1:] >= on[:-1], axis=0)
    falling = np.all(on[1:] <= on[:-1], axis=0)
    constant = on.all(axis=0) | (~on).all(axis=0)
    if np.any(~(rising | falling)):
        j = int(np.flatnonzero(~(rising | falling))[0])
        raise UnsupportedModelError(
            f"{graph.where(stage.node)}: unit {j} is not a threshold of its pre-activation in onnxruntime"
        )
    if np.any((out == 0).all(axis=0)):
        j = int(np.flatnonzero((out == 0).all(axis=0))[0])
        raise UnsupportedModelError(f"{graph.where(stage.node)}: unit {j} always outputs Sign(0) = 0, not ±1")
    # Orientation: rising units keep their row, falling ones negate it (a' = -a).
    flip = falling & ~rising | (constant & (stage.alpha < 0))
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
        raise UnsupportedModelError(f"{graph.where(stage.node)}: unit {j} outputs 0 at several pre-activations")
    weight = (stage.weight * direction[:, None]).astype(np.int8)
    return Layer(weight, threshold.astype(np.float64), np.abs(stage.alpha), integer=True, sign_ties=sign_ties)


def _gemm_nodes(gemm: GemmScale, out: str, dtype: type) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing Gemm's ``alpha * P + beta * C`` from its product P (fed as ``_PRODUCT``)."""
    steps, current = [], _PRODUCT
    if gemm.alpha != 1.0:
        steps.append((Op.MUL, current, np.asarray(gemm.alpha, dtype), _SCALED))
        current = _SCALED
    if gemm.bias is not None:
        steps.append((Op.ADD, current, np.asarray(gemm.beta * np.asarray(gemm.bias), dtype), out))
    elif steps:
        steps[-1] = steps[-1][:3] + (out,)
    else:
        steps.append((Op.IDENTITY, current, None, out))
    nodes, initializers = [], []
    for op, inp, const, result in steps:
        inputs = [inp]
        if const is not None:
            name = f"{result}__const"
            initializers.append(onnx.numpy_helper.from_array(np.asarray(const), name))
            inputs.append(name)
        nodes.append(helper.make_node(op.value, inputs, [result]))
    return nodes, initializers


def _calibration_model(stage: Stage, graph: Graph, m: int) -> tuple[onnx.ModelProto, str]:
    """The stage's own nodes as a model fed with pre-activations; (model, name of its input)."""
    prefix, initializers = ([], []) if stage.gemm is None else _gemm_nodes(stage.gemm, stage.calib_input, graph.dtype)
    feed = _PRODUCT if stage.gemm is not None else stage.calib_input
    seen = set()
    for node in stage.calib_nodes:
        for name in node.input:
            if name and name not in seen and graph.const(name) is not None:
                seen.add(name)
                initializers.append(onnx.numpy_helper.from_array(np.asarray(graph.const(name)), name))
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(graph.dtype))
    mini = helper.make_model(
        helper.make_graph(
            prefix + list(stage.calib_nodes), "calibration",
            [helper.make_tensor_value_info(feed, dtype, [None, m])],
            [helper.make_tensor_value_info(stage.output, dtype, None)],
            initializers,
        ),
        opset_imports=[helper.make_opsetid("", graph.opset)],
        ir_version=graph.model.ir_version,
    )
    return mini, feed


def _run_stage(stage: Stage, graph: Graph, pre: np.ndarray) -> np.ndarray:
    """Run the stage's own nodes (linear output → binarizer output) in onnxruntime on ``pre``."""
    m = pre.shape[1]
    mini, feed = _calibration_model(stage, graph, m)
    try:
        session = new_session(mini.SerializeToString(), threads=1)
        (out,) = session.run([stage.output], {feed: pre.astype(graph.dtype)})
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedModelError(f"{graph.where(stage.node)}: onnxruntime cannot run this layer ({e})") from e
    out = np.asarray(out, np.float64).reshape(len(pre), m)
    if not np.all(np.isin(out, (-1.0, 0.0, 1.0))):
        raise UnsupportedModelError(f"{graph.where(stage.node)}: the activation outputs values other than ±1")
    return out
