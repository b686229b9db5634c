"""The graph index: producers, consumers, the input signature, and constants folded with numpy.

Constant subgraphs (``Sign`` of a weight initializer, ``Cast`` of int8 weights, ``Transpose``,
``Constant`` nodes, ...) are folded on demand: :meth:`Graph.const` evaluates the producers of a
tensor with the numpy folders of :data:`FOLDERS` (op type → function), one entry per op.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedModelError
from ..onnx_file import MAX_TENSOR_ELEMENTS, tensor_to_array
from .ops import FLOAT_TYPES, Op


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
        name, op = self.read_as.get(node.output[0] if node.output else "", (node.name or node.output[0], node.op_type))
        return f"{self.path}: node {name!r} ({op})"

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant (folding constant subgraphs), else None.

        Folds iteratively (depth-first with an explicit stack), so a long chain of constant nodes
        cannot exhaust Python's recursion limit.
        """
        if name in self._values or name in self._not_const:
            return self._values.get(name)
        stack = [name]
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
            self._fold_node(node)
        return self._values.get(name)

    def _fold_node(self, node: onnx.NodeProto) -> None:
        inputs = [self._values[i] if i else None for i in node.input]
        try:
            outputs = fold(node, inputs, self.opset)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{self.where(node)}: {e}") from e
        except Exception as e:  # numpy raises many kinds of errors on inconsistent constants
            raise UnsupportedModelError(f"{self.where(node)}: cannot fold constant inputs ({e})") from e
        for out, value in zip(node.output, outputs, strict=False):
            if np.size(value) > MAX_TENSOR_ELEMENTS:
                raise UnsupportedModelError(f"{self.where(node)}: constant {out!r} is too large")
            self._values[out] = np.asarray(value)
        self._not_const.update(o for o in node.output[len(outputs):] if o)

    def need_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        """The constant input ``index`` of ``node``; refuses a missing, non-constant or non-finite one."""
        value = self.const(node.input[index]) if index < len(node.input) and node.input[index] else None
        if value is None:
            raise UnsupportedModelError(f"{self.where(node)}: {what} must be a constant")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise UnsupportedModelError(f"{self.where(node)}: {what} {node.input[index]!r} contains NaN or inf")
        return value


def attrs(node: onnx.NodeProto) -> dict:
    """The node's attributes as a name → Python value dict."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ---------------------------------------------------------------------- folding constants
#: A folder evaluates one node: (constant inputs, attributes, opset) -> outputs.
Folder = Callable[[list, dict, int], list]

_UNARY = {
    Op.IDENTITY: lambda v: v, Op.SIGN: np.sign, Op.NEG: np.negative, Op.ABS: np.abs,
    Op.SQRT: np.sqrt, Op.RECIPROCAL: np.reciprocal, Op.NOT: np.logical_not,
}
_BINARY = {
    Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.GREATER_OR_EQUAL: np.greater_equal,
    Op.GREATER: np.greater, Op.LESS: np.less, Op.LESS_OR_EQUAL: np.less_equal, Op.EQUAL: np.equal,
    Op.POW: np.power,  # Brevitas' TensorNorm writes sqrt(var) as Pow(var, 0.5)
}
#: Ops that broadcast their first n inputs: the result's size is checked before numpy allocates it.
_BROADCASTING = {**{op: 2 for op in _BINARY}, Op.DIV: 2, Op.WHERE: 3}


def fold(node: onnx.NodeProto, x: list, opset: int) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with numpy (the ops weight preprocessing uses)."""
    op, at = node.op_type, attrs(node)
    if op in _BROADCASTING:
        _check_broadcast(x[: _BROADCASTING[op]])
    folder = FOLDERS.get(op)
    if folder is None:
        raise UnsupportedModelError(f"op {op} on constant inputs is not supported")
    return folder(x, at, opset)


def _check_broadcast(operands: list) -> None:
    """Refuse a broadcast whose result would be huge, before numpy allocates it."""
    shape = np.broadcast_shapes(*(np.shape(v) for v in operands))
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise UnsupportedModelError(f"broadcasting constants to shape {shape} is over bnnmip's size limit")


def _constant(x: list, at: dict, opset: int) -> list[np.ndarray]:
    if "value" in at:
        return [onnx.numpy_helper.to_array(at["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in at:
            return [np.asarray(at[key], dtype)]
    raise UnsupportedModelError(f"unsupported Constant value kind {list(at)}")


def _unary(f: Callable) -> Folder:
    return lambda x, at, opset: [f(x[0])]


def _binary(f: Callable) -> Folder:
    return lambda x, at, opset: [f(x[0], x[1])]


def _div(x: list, at: dict, opset: int) -> list[np.ndarray]:
    return [x[0] // x[1] if x[0].dtype.kind in "iu" else np.divide(x[0], x[1])]


def _reshape(x: list, at: dict, opset: int) -> list[np.ndarray]:
    spec = [int(s) for s in np.asarray(x[1]).reshape(-1)]
    shape = x[0].shape
    target = tuple(shape[i] if s == 0 and not at.get("allowzero", 0) else s for i, s in enumerate(spec))
    return [x[0].reshape(target)]


def _flatten(x: list, at: dict, opset: int) -> list[np.ndarray]:
    axis = at.get("axis", 1) % max(x[0].ndim, 1)
    return [x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)]


def _squeeze_axes(x: list, at: dict, opset: int) -> list | None:
    return at.get("axes") if opset < 13 else (x[1].tolist() if len(x) > 1 and x[1] is not None else None)


def _squeeze(x: list, at: dict, opset: int) -> list[np.ndarray]:
    axes = _squeeze_axes(x, at, opset)
    return [np.squeeze(x[0], axis=None if axes is None else tuple(axes))]


def _unsqueeze(x: list, at: dict, opset: int) -> list[np.ndarray]:
    axes = _squeeze_axes(x, at, opset)
    out = x[0]
    for a in sorted(a % (out.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, a)
    return [out]


#: Op type -> numpy folder; folding a new op is one function and one entry here.
FOLDERS: dict[str, Folder] = {
    Op.CONSTANT: _constant,
    **{op: _unary(f) for op, f in _UNARY.items()},
    **{op: _binary(f) for op, f in _BINARY.items()},
    Op.DIV: _div,
    Op.CAST: lambda x, at, opset: [x[0].astype(helper.tensor_dtype_to_np_dtype(at["to"]))],
    Op.WHERE: lambda x, at, opset: [np.where(x[0], x[1], x[2])],
    Op.TRANSPOSE: lambda x, at, opset: [np.transpose(x[0], at.get("perm"))],
    Op.RESHAPE: _reshape,
    Op.FLATTEN: _flatten,
    Op.SQUEEZE: _squeeze,
    Op.UNSQUEEZE: _unsqueeze,
}
