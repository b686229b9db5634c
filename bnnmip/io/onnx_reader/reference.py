r"""The reference graph: the standard ONNX model bnnmip reads, and onnxruntime runs to judge it.

For a standard graph the reference is the file's own graph.  Two rewrites make more graphs
readable and runnable, and both compute exactly what the original computes:

* **Custom QONNX / FINN ops** (:data:`CUSTOM_OPS`), which onnxruntime cannot run, become standard
  nodes before the walk (:func:`standard_model`), with qonnx's own arithmetic:

  - ``BipolarQuant(x, s)`` is ``where(x >= 0, 1, -1) * s`` in qonnx, hence
    ``Where(GreaterOrEqual(x, 0), s, -s)`` (:math:`\pm 1 \cdot s` is exact in any float type);
  - ``MultiThreshold(x, T)`` is ``out_scale * #{k: x >= T[c, k]} + out_bias`` per channel ``c``; with
    one threshold per channel that is ``Where(GreaterOrEqual(x, T[c]), hi, lo)`` with
    ``hi = out_scale + out_bias`` and ``lo = out_bias`` rounded as qonnx rounds them.  Several
    thresholds per channel (a multi-bit activation) are refused here, naming the node.

  Initializers that are also listed as graph inputs (raw QONNX exports) are dropped from the
  inputs: bnnmip reads them as the constants they are.
* **A batch fixed at 1** (torch's dynamo exporter, Brevitas, FINN): the walk accepts a ``Reshape``
  whose target starts with that 1, and :func:`judged_model` writes ``-1`` there instead, so
  onnxruntime can judge many inputs in one run (:func:`.origin.any_batch` frees the input's and
  outputs' batch dimension).

bnnmip never runs a custom op: the reference holds only standard ONNX nodes that bnnmip wrote.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import UnsupportedModelError
from .graph import attrs
from .ops import Op

_QONNX = "qonnx.custom_op.general"
_FINN = "finn.custom_op.general"  # MultiThreshold's domain in FINN before qonnx
_BIPOLAR_QUANT = "BipolarQuant"
_MULTI_THRESHOLD = "MultiThreshold"

#: The (domain, op type) pairs of custom domains bnnmip reads (by rewriting them; never by running them).
CUSTOM_OPS = frozenset({(_QONNX, _BIPOLAR_QUANT), (_QONNX, _MULTI_THRESHOLD), (_FINN, _MULTI_THRESHOLD)})
_STANDARD = ("", "ai.onnx")
#: MultiThreshold's channel axis when ``data_layout`` is not given, by input rank (as qonnx guesses it).
_RANK_LAYOUT = {2: "NC", 3: "NWC", 4: "NCHW"}


def standard_model(model: onnx.ModelProto, path: str) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """The model with its custom ops rewritten as standard nodes (see the module docstring).

    Returns
    -------
    (model, read_as)
        The standard model (``model`` itself when there is nothing to rewrite) and, for error
        messages, the (name, op type) of the custom node each written node stands for (keyed by
        its output).
    """
    inits = {t.name for t in model.graph.initializer}
    custom = [n for n in model.graph.node if n.domain not in _STANDARD]
    if not custom and not any(i.name in inits for i in model.graph.input):
        return model, {}
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    kept = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(kept)
    if not custom:
        return model, {}
    writer = _Writer(model, path)
    nodes = []
    for node in g.node:
        nodes.extend(writer.rewrite(node) if node.domain not in _STANDARD else [node])
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(writer.initializers)
    kept_opsets = [op for op in model.opset_import if op.domain in _STANDARD or op.domain == "ai.onnx.ml"]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)
    return model, writer.read_as


class _Writer:
    """Writes the standard nodes that stand for one custom node at a time."""

    def __init__(self, model: onnx.ModelProto, path: str):
        self.path = path
        self.opset = next(op.version for op in model.opset_import if op.domain in _STANDARD)
        self.values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == Op.CONSTANT and node.domain in _STANDARD and "value" in attrs(node):
                self.values[node.output[0]] = numpy_helper.to_array(attrs(node)["value"])
        self.ranks = _ranks(model)
        self.initializers: list[onnx.TensorProto] = []
        self.read_as: dict[str, tuple[str, str]] = {}

    def where(self, node: onnx.NodeProto) -> str:
        return f"{self.path}: node {node.name or node.output[0]!r} ({node.op_type})"

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        if node.op_type == _BIPOLAR_QUANT:
            return self._bipolar_quant(node)
        if node.op_type == _MULTI_THRESHOLD:
            return self._multi_threshold(node)
        raise UnsupportedModelError(f"{self.where(node)}: custom op of domain {node.domain!r} is not read")

    def _constant(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        value = self.values.get(name)
        if value is None:
            raise UnsupportedModelError(f"{self.where(node)}: {what} must be a constant (an initializer)")
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise UnsupportedModelError(f"{self.where(node)}: {what} {name!r} must hold finite floats")
        return value

    def _add(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _where_ge(self, node: onnx.NodeProto, x: str, threshold: np.ndarray, hi: np.ndarray,
                  lo: np.ndarray) -> list[onnx.NodeProto]:
        """``Where(x >= threshold, hi, lo)`` (``Where(x < threshold, lo, hi)`` before opset 12)."""
        out = node.output[0]
        cond = f"{out}__bnnmip_cmp"
        names = [self._add(f"{out}__bnnmip_{k}", v) for k, v in (("t", threshold), ("hi", hi), ("lo", lo))]
        if self.opset >= 12:
            compare = helper.make_node(Op.GREATER_OR_EQUAL.value, [x, names[0]], [cond], name=node.name)
            branches = [names[1], names[2]]
        else:
            compare = helper.make_node(Op.LESS.value, [x, names[0]], [cond], name=node.name)
            branches = [names[2], names[1]]
        select = helper.make_node(Op.WHERE.value, [cond] + branches, [out], name=f"{node.name}/Where")
        self.read_as[cond] = self.read_as[out] = (node.name or out, node.op_type)
        return [compare, select]

    def _bipolar_quant(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """``where(x >= 0, 1, -1) * s`` → ``Where(x >= 0, s, -s)``."""
        if len(node.input) != 2 or len(node.output) != 1:
            raise UnsupportedModelError(f"{self.where(node)}: expected inputs (x, scale) and one output")
        scale = self._constant(node, 1, "the scale")
        zero = np.zeros((), scale.dtype)
        return self._where_ge(node, node.input[0], zero, scale, -scale)

    def _multi_threshold(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """One threshold per channel: ``Where(x >= T[c], out_scale + out_bias, out_bias)``."""
        if len(node.input) != 2 or len(node.output) != 1:
            raise UnsupportedModelError(f"{self.where(node)}: expected inputs (x, thresholds) and one output")
        at = attrs(node)
        thresholds = self._constant(node, 1, "the thresholds")
        if thresholds.ndim != 2:
            raise UnsupportedModelError(f"{self.where(node)}: thresholds of shape {thresholds.shape}, expected (C, B)")
        channels, steps = thresholds.shape
        if steps != 1:
            dtype = at.get("out_dtype", b"?")
            raise UnsupportedModelError(
                f"{self.where(node)}: {steps} thresholds per channel make a multi-bit activation "
                f"(out_dtype {dtype.decode() if isinstance(dtype, bytes) else dtype}); bnnmip reads binarized "
                "networks, whose MultiThresholds have one threshold per channel (out_scale 2, out_bias -1). "
                "An 8-bit input quantizer (BNN-PYNQ's FC models) is such a node: export the network without it, "
                "so the first layer reads the real input"
            )
        dtype = thresholds.dtype.type
        scale, bias = dtype(at.get("out_scale", 1.0)), dtype(at.get("out_bias", 0.0))
        if not (np.isfinite(scale) and np.isfinite(bias)):
            raise UnsupportedModelError(f"{self.where(node)}: out_scale and out_bias must be finite")
        hi, lo = np.asarray(scale * dtype(1) + bias), np.asarray(scale * dtype(0) + bias)
        per_channel = thresholds[:, 0]
        if channels == 1:
            return self._where_ge(node, node.input[0], per_channel.reshape(()), hi, lo)
        return self._where_ge(node, node.input[0], self._laid_out(node, per_channel, at), hi, lo)

    def _laid_out(self, node: onnx.NodeProto, per_channel: np.ndarray, at: dict) -> np.ndarray:
        """Per-channel thresholds shaped to broadcast along the input's channel axis."""
        layout = at.get("data_layout", b"")
        layout = layout.decode() if isinstance(layout, bytes) else str(layout)
        rank = len(layout) if layout else self.ranks.get(node.input[0])
        if not layout:
            layout = _RANK_LAYOUT.get(rank, "")
        if not layout or "C" not in layout or rank is None or len(layout) != rank:
            raise UnsupportedModelError(
                f"{self.where(node)}: cannot tell the channel axis of its input (set data_layout, e.g. 'NC')"
            )
        axis = layout.index("C")
        return per_channel.reshape((-1,) + (1,) * (rank - 1 - axis))


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor → rank, from the value infos the file declares."""
    ranks = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            ranks[value.name] = len(t.shape.dim)
    return ranks


def judged_model(model: onnx.ModelProto, batch_targets: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The reference with every ``Reshape`` that fixed the batch at 1 given a ``-1`` batch instead.

    ``batch_targets`` maps the output of such a Reshape to its new target shape (recorded by the
    walk); the new target is a new initializer, so a shape constant shared with other nodes stays.
    """
    if not batch_targets:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        target = batch_targets.get(node.output[0]) if node.op_type == Op.RESHAPE else None
        if target is not None:
            name = f"{node.output[0]}__bnnmip_any_batch"
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(target, np.int64), name))
            node.input[1] = name
    return model
