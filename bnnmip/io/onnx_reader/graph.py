"""The graph index: producers, consumers, the input signature, and folded constants.

Constant subgraphs (``Sign`` of a weight initializer, ``Cast`` of int8 weights, ``Transpose``,
``Constant`` nodes, ...) are folded on demand: :meth:`Graph.const` evaluates the producers of a
tensor with the numpy folders of :data:`.fold.FOLDERS` (op type → function), and every value it
returns has been checked against onnxruntime running the same nodes (:func:`.fold.check_folds`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from ...errors import UnsupportedModelError
from ..onnx_file import node_label, tensor_to_array
from . import fold as folding
from .fold import attrs
from .ops import FLOAT_TYPES

__all__ = ["Graph", "attrs"]


class Graph:
    """Producers, consumers and folded constants of a validated graph.

    Parameters
    ----------
    model
        The validated model.
    path
        Where it came from; every error message starts with it.
    read_as
        Output tensor → (node name, op type) to name in error messages, for nodes bnnmip wrote in
        place of a custom op (see :mod:`.reference`).
    """

    def __init__(self, model: onnx.ModelProto, path: str, read_as: dict[str, tuple[str, str]] | None = None):
        self.model, self.path, self.read_as = model, path, dict(read_as or {})
        g = model.graph
        self.opset = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
        self._values = {t.name: tensor_to_array(t) for t in g.initializer}
        self._not_const: set[str] = set()
        self.folded_bytes = 0  # all values folded so far, against fold.MAX_FOLDED_BYTES
        self.producer = {out: node for node in g.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = [o.name for o in g.output]
        inputs = [i for i in g.input if i.name not in self._values]
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise UnsupportedModelError(f"{path}: expected one graph input (the image), found {len(inputs)}: {names}")
        self.input_name = inputs[0].name
        self.dtype, self.input_shape = self._input_signature(inputs[0])

    def _input_signature(self, value: onnx.ValueInfoProto) -> tuple[type, tuple[int, ...]]:
        t = value.type.tensor_type
        if t.elem_type not in FLOAT_TYPES:
            raise UnsupportedModelError(
                f"{self.path}: input {value.name!r} has element type "
                f"{onnx.TensorProto.DataType.Name(t.elem_type)}; bnnmip reads float or double inputs"
            )
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
            raise UnsupportedModelError(
                f"{self.path}: input {value.name!r} must have shape (batch, features...) with fixed "
                f"feature sizes; got {[d if d is not None else '?' for d in dims]}"
            )
        return FLOAT_TYPES[t.elem_type], tuple(dims[1:])

    def where(self, node: onnx.NodeProto) -> str:
        """The prefix of an error message about ``node``: file, node name and op type."""
        out = next((o for o in node.output if o), "")
        if out in self.read_as:  # a node bnnmip wrote in place of a custom op: named as the file names it
            name, op = self.read_as[out]
            return f"{self.path}: node {name!r} ({op})"
        return f"{self.path}: {node_label(node)}"

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant (folding constant subgraphs), else None.

        Folds iteratively (depth-first with an explicit stack), so a long chain of constant nodes
        cannot exhaust Python's recursion limit; the nodes folded by this call are then checked
        against onnxruntime in one session before any of their values is used.
        """
        if name in self._values or name in self._not_const:
            return self._values.get(name)
        stack, folds = [name], []
        while stack:
            top = stack[-1]
            if top in self._values or top in self._not_const:
                stack.pop()
                continue
            node = self.producer.get(top)
            if node is None:
                self._not_const.add(top)
                stack.pop()
                continue
            pending = [i for i in node.input if i and i not in self._values and i not in self._not_const]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if any(i in self._not_const for i in node.input if i):
                self._not_const.update(o for o in node.output if o)
                continue
            folds.append(self._fold_node(node))
        try:
            folding.check_folds(folds, self.opset, self.model.ir_version, self.path)
        except UnsupportedModelError:
            for node, _, _ in folds:  # never used unchecked, not even by the next call
                for out in node.output:
                    self._values.pop(out, None)
            raise
        return self._values.get(name)

    def _fold_node(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto, list, list]:
        """Fold one node with numpy (within the size limits); (node, inputs, outputs) for the onnxruntime check."""
        inputs = [self._values[i] if i else None for i in node.input]
        try:
            outputs = folding.fold(node, inputs, self.opset)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{self.where(node)}: {e}") from e
        except Exception as e:  # numpy raises many kinds of errors on inconsistent constants
            raise UnsupportedModelError(f"{self.where(node)}: cannot fold constant inputs ({e})") from e
        self.folded_bytes += sum(v.nbytes for v in outputs)
        if self.folded_bytes > folding.MAX_FOLDED_BYTES:
            raise UnsupportedModelError(f"{self.where(node)}: the folded constants take over "
                                        f"{folding.MAX_FOLDED_BYTES:,} bytes, bnnmip's limit")
        for out, value in zip(node.output, outputs, strict=False):
            if out:
                self._values[out] = value
        self._not_const.update(o for o in node.output[len(outputs):] if o)
        return node, inputs, outputs

    def need_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        """The constant input ``index`` of ``node``; refuses a missing, non-constant or non-finite one."""
        value = self.const(node.input[index]) if index < len(node.input) and node.input[index] else None
        if value is None:
            raise UnsupportedModelError(f"{self.where(node)}: {what} must be a constant")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise UnsupportedModelError(f"{self.where(node)}: {what} {node.input[index]!r} contains NaN or inf")
        return value
