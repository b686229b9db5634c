"""A threshold stage's own nodes as a small ONNX model, run in onnxruntime on chosen inputs.

Calibration feeds a layer's nodes (from its linear product to its binarizer) with the values its
product can take and reads what onnxruntime's float32 arithmetic makes of them.  A ``Gemm``'s
``alpha * P + beta * C`` is rebuilt as nodes after the product ``P`` (fed as ``_PRODUCT``), or the
Gemm's output itself is fed (``at_output``) when the caller brackets it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedModelError
from ..runtime import new_session
from .graph import Graph
from .ops import Op
from .walk import GemmScale, Stage

_PRODUCT = "__bnnmip_product"  # the calibration input of a Gemm: its product, before alpha and C
_SCALED = "__bnnmip_scaled"


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


def _calibration_model(stage: Stage, graph: Graph, m: int, at_output: bool) -> tuple[onnx.ModelProto, str]:
    """The stage's own nodes as a model fed with pre-activations; (model, name of its input)."""
    rebuild = stage.gemm is not None and not at_output
    prefix, initializers = _gemm_nodes(stage.gemm, stage.calib_input, graph.dtype) if rebuild else ([], [])
    feed = _PRODUCT if rebuild else stage.calib_input
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


def run_stage(stage: Stage, graph: Graph, values: np.ndarray, at_output: bool = False) -> np.ndarray:
    """Run the stage's own nodes (linear output → binarizer output) in onnxruntime on ``values``.

    ``values`` (rows × units) are the linear node's product, or its output if ``at_output``
    (they are cast to the graph's float type first).  Returns the binarizer's outputs, float64.
    """
    m = values.shape[1]
    mini, feed = _calibration_model(stage, graph, m, at_output)
    try:
        session = new_session(mini.SerializeToString(), threads=1)  # one-off: uncached, one thread (fast to start)
        (out,) = session.run([stage.output], {feed: values.astype(graph.dtype)})
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedModelError(f"{graph.where(stage.node)}: onnxruntime cannot run this layer ({e})") from e
    out = np.asarray(out, np.float64).reshape(len(values), m) / stage.bits
    if not np.all(np.isin(out, (-1.0, 0.0, 1.0))):
        raise UnsupportedModelError(f"{graph.where(stage.node)}: the activation outputs values other than ±1")
    return out
