"""Folding constant nodes: numpy folders, each fold checked against onnxruntime running that node.

:data:`FOLDERS` maps an op type to a numpy function (one entry per op).  numpy and ONNX do not
always agree (integer ``Div`` floors in numpy and truncates in ONNX; ``Cast`` of NaN or of values
out of range; ``Where`` on a non-boolean condition; mixed element types that numpy promotes and
ONNX refuses), so a folder's result is never trusted alone: :func:`check_folds` runs the same
nodes, each on its own, in onnxruntime on the same constant inputs (one session for a batch of
nodes, with every node's inputs fed separately), and refuses any node whose result differs in
element type, shape or any value (NaN equal to NaN, the sign of zero compared).  Folding therefore
means exactly what onnxruntime computes, or the model is refused naming the node.

Before onnxruntime sees a node, :data:`PRECONDITIONS` refuse inputs on which its kernels crash the
process rather than raise (integer division by zero, ``INT_MIN / -1``: SIGFPE).  Sizes are checked
before numpy allocates (:func:`fold` refuses broadcasts over the element limit; the graph keeps a
byte budget over all folded values, :data:`MAX_FOLDED_BYTES`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedModelError
from ..onnx_file import MAX_RANK, MAX_TENSOR_ELEMENTS, NUMERIC_TYPES, node_label
from ..runtime import new_session
from .ops import Op

MAX_FOLDED_BYTES = 2**30
"""All constants folded for one model, together (the file's own tensors are bounded by its size)."""

#: A folder evaluates one node: (constant inputs, attributes, opset) -> outputs.
Folder = Callable[[list, dict, int], list]


def attrs(node: onnx.NodeProto) -> dict:
    """The node's attributes as a name → Python value dict."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


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
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedModelError(f"op {node.domain}.{op} is not an ONNX op")
    folder = FOLDERS.get(op)
    if folder is None:
        raise UnsupportedModelError(f"op {op} on constant inputs is not supported")
    if op in _BROADCASTING:
        _check_broadcast(x[: _BROADCASTING[op]])
    PRECONDITIONS.get(op, _no_precondition)(x, at)
    with np.errstate(all="ignore"):  # numpy's opinion on overflow is not asked: onnxruntime's result is
        outputs = [np.asarray(v) for v in folder(x, at, opset)]
    for value in outputs:
        if value.ndim > MAX_RANK or value.size > MAX_TENSOR_ELEMENTS:
            raise UnsupportedModelError(f"a folded constant of shape {value.shape} is over bnnmip's size limit")
    return outputs


def _check_broadcast(operands: list) -> None:
    """Refuse a broadcast whose result would be huge, before numpy allocates it."""
    shape = np.broadcast_shapes(*(np.shape(v) for v in operands))
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise UnsupportedModelError(f"broadcasting constants to shape {shape} is over bnnmip's size limit")


# ---------------------------------------------------------------------- preconditions
def _no_precondition(x: list, at: dict) -> None:
    return None


def _integer_division(x: list, at: dict) -> None:
    """Integer ``Div``: a zero divisor or ``INT_MIN / -1`` crashes onnxruntime (SIGFPE); refused first."""
    a, b = np.asarray(x[0]), np.asarray(x[1])
    if a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
        return
    if np.any(b == 0):
        raise UnsupportedModelError("integer division by zero")
    if a.dtype.kind == "i" and b.dtype.kind == "i" and a.dtype == b.dtype \
            and np.any((a == np.iinfo(a.dtype).min) & (b == -1)):
        raise UnsupportedModelError(f"integer division {np.iinfo(a.dtype).min} / -1 overflows")


def _cast_target(x: list, at: dict) -> None:
    if at.get("to") not in NUMERIC_TYPES:
        raise UnsupportedModelError(f"Cast to element type {at.get('to')!r} (bnnmip folds numeric types only)")


#: Op type -> a check of the constant inputs before numpy or onnxruntime computes anything.
PRECONDITIONS: dict[str, Callable[[list, dict], None]] = {Op.DIV: _integer_division, Op.CAST: _cast_target}


# ---------------------------------------------------------------------- the numpy folders
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
    """ONNX ``Div``: integer division truncates toward zero (numpy's ``//`` floors)."""
    a, b = x
    if a.dtype.kind not in "iu":
        return [np.divide(a, b)]
    q = a // b
    return [q + ((q * b != a) & ((a < 0) != (b < 0))).astype(q.dtype)]


def _reshape(x: list, at: dict, opset: int) -> list[np.ndarray]:
    spec = [int(s) for s in np.asarray(x[1]).reshape(-1)]
    shape = x[0].shape
    target = tuple(shape[i] if s == 0 and not at.get("allowzero", 0) else s for i, s in enumerate(spec))
    return [x[0].reshape(target)]


def _flatten(x: list, at: dict, opset: int) -> list[np.ndarray]:
    """ONNX ``Flatten``: axis in [-r, r]; the output is (prod(shape[:axis]), prod(shape[axis:]))."""
    ndim = x[0].ndim
    axis = at.get("axis", 1)
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis <= ndim:
        raise UnsupportedModelError(f"Flatten axis {at.get('axis', 1)} for a tensor of rank {ndim}")
    return [x[0].reshape(math.prod(x[0].shape[:axis]), math.prod(x[0].shape[axis:]))]


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


#: Op type -> numpy folder; folding a new op is one function and one entry here (checked by onnxruntime).
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


# ---------------------------------------------------------------------- the onnxruntime check
def check_folds(folds: Sequence[tuple[onnx.NodeProto, list, list]], opset: int, ir_version: int, path: str) -> None:
    """Refuse any fold whose numpy result is not exactly what onnxruntime computes for that node.

    ``folds`` holds (node, constant inputs, numpy outputs).  One onnxruntime session runs every
    node on its own: node ``i``'s inputs are graph inputs ``__fold{i}_in{k}`` fed with the same
    arrays, its outputs graph outputs ``__fold{i}_out{k}``.
    """
    if not folds:
        return
    nodes, inputs, outputs, feed = [], [], [], {}
    for i, (node, x, _) in enumerate(folds):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"__fold{i}"
        for k, value in enumerate(x):
            if value is None:
                continue
            name = f"__fold{i}_in{k}"
            copy.input[k] = name
            feed[name] = np.ascontiguousarray(value)
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        value.shape))
        for k, out in enumerate(node.output):
            if out:
                copy.output[k] = f"__fold{i}_out{k}"
                outputs.append(onnx.ValueInfoProto(name=copy.output[k]))
        nodes.append(copy)
    model = helper.make_model(helper.make_graph(nodes, "folds", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    names = [o.name for o in outputs]
    try:
        theirs = dict(zip(names, new_session(model.SerializeToString(), threads=1).run(names, feed)))
    except Exception as e:  # onnxruntime raises its own exception types
        node = _failing_node(folds, str(e))
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(f"{path}: {node}: onnxruntime cannot evaluate this constant node "
                                    f"({first_line})") from None
    for i, (node, _, ours) in enumerate(folds):
        for k, value in enumerate(ours):
            name = f"__fold{i}_out{k}"
            if name in theirs and not _identical(value, np.asarray(theirs[name])):
                raise UnsupportedModelError(
                    f"{path}: {node_label(node)}: numpy folds this constant to {_show(value)}, onnxruntime computes "
                    f"{_show(np.asarray(theirs[name]))}; bnnmip refuses a constant whose meaning it does not reproduce")


def _failing_node(folds, message: str) -> str:
    for i, (node, _, _) in enumerate(folds):
        if f"__fold{i}'" in message or f"__fold{i} " in message or f"__fold{i}_" in message:
            return node_label(node)
    return node_label(folds[0][0]) if len(folds) == 1 else f"one of {len(folds)} constant nodes"


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same element type, shape and values (NaN equals NaN; +0 and -0 differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan], b[~nan])
                and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan])))


def _show(value: np.ndarray) -> str:
    flat = value.reshape(-1)[:4].tolist()
    return f"{value.dtype} {value.shape} {flat}{'...' if value.size > 4 else ''}"
