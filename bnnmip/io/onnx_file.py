"""Reading an ONNX file safely: limits, external-data policy, opset range, structural checks.

bnnmip never executes code from a model file.  Before anything is allocated or passed to onnx's
checker, this module refuses files that are too large, graphs with too many nodes, tensors whose
declared shape is huge or disagrees with their data (or whose element type is not numeric),
inputs declaring huge examples, and external data that is not a plain file inside the model's
own folder (absolute paths, ``..`` components and symlinks are refused, never read).  Cycles,
dangling inputs and tensors defined twice are reported with the node at fault.  See SECURITY.md.

**One tensor reader.**  Every tensor of the file, wherever the protobuf holds it (initializers,
Constant values, the values and indices of sparse tensors, tensors in any attribute), is found
by one reflective walk over the message (:func:`every_tensor`) and goes through one check
(:func:`_check_tensor`: limits, numeric type, stored size, external data inlined from inside the
folder).  Sparse tensors are then made dense (:func:`_densify_sparse`), so what bnnmip reads and
what onnxruntime runs is one inline, dense, checked model: onnxruntime never resolves a file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, helper

from ..errors import ModelFileError, UnsupportedModelError

MAX_MODEL_BYTES = 512 * 2**20  # the model file plus its external data
MAX_TENSOR_ELEMENTS = 64 * 2**20
MAX_INPUT_FEATURES = 16 * 2**20  # values per input (the reader keeps a few float64 arrays of this size)
MAX_NODES = 100_000  # a BNN has about ten nodes per layer
MAX_LAYERS = 256  # MatMul / Gemm nodes: each layer is calibrated in onnxruntime at load time
MAX_RANK = 32  # dimensions of a tensor or of the graph input (numpy's own limit is 32 to 64)
MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()

# Element types a BNN's constants may have (numeric types numpy holds natively), and the typed
# field of TensorProto that stores them when there is no raw_data.
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.FLOAT16: "int32_data",
    TensorProto.INT8: "int32_data", TensorProto.UINT8: "int32_data", TensorProto.INT16: "int32_data",
    TensorProto.UINT16: "int32_data", TensorProto.INT32: "int32_data", TensorProto.BOOL: "int32_data",
    TensorProto.INT64: "int64_data", TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data",
}
#: Element types bnnmip reads (and folds to).
NUMERIC_TYPES = frozenset(_TYPED_FIELD)


def read_model(path: str | os.PathLike, *, custom_ops: Collection[tuple[str, str]] = ()) -> onnx.ModelProto:
    """Parse and validate ``path``; external data is checked, read and inlined.

    ``custom_ops`` lists the (domain, op type) pairs of custom domains the caller rewrites into
    standard ONNX itself (nothing ever runs them); nodes of any other custom domain are refused.

    Raises :class:`ModelFileError` for unreadable, non-ONNX or unsafe files and
    :class:`UnsupportedModelError` for an opset outside bnnmip's range.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: empty file, not an ONNX model")
    if size > MAX_MODEL_BYTES:
        raise ModelFileError(f"{path}: {size:,} bytes is over bnnmip's limit of {MAX_MODEL_BYTES:,} for a model")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError, or RuntimeError for bad wire data
        raise ModelFileError(f"{path}: not an ONNX model (cannot parse: {e})") from e
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelFileError(f"{path}: not an ONNX model (no graph with nodes)")
    if len(model.graph.node) > MAX_NODES:
        raise ModelFileError(f"{path}: {len(model.graph.node):,} nodes, over bnnmip's limit of {MAX_NODES:,}")
    linear = sum(node.op_type in ("MatMul", "Gemm") for node in model.graph.node)
    if linear > MAX_LAYERS:
        raise ModelFileError(f"{path}: {linear:,} MatMul/Gemm nodes, over bnnmip's limit of {MAX_LAYERS} layers; "
                             "refused before reading them")
    _check_opset(model, path, frozenset(custom_ops))
    _refuse_containers(model, path)
    budget = [MAX_MODEL_BYTES - size]
    for tensor in every_tensor(model):
        _check_tensor(tensor, path, budget)
    _densify_sparse(model, path)
    _check_inputs(model.graph, path)
    _check_structure(model.graph, path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError, or whatever the C++ checker raises on odd protos
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ModelFileError(f"{path}: invalid ONNX model: {lines[0]}") from e
    return model


def _check_inputs(graph: onnx.GraphProto, path: Path) -> None:
    """Refuse a graph input whose declared feature shape is huge (the reader allocates per feature)."""
    for value in graph.input:
        if not value.type.HasField("tensor_type"):
            continue
        rank = len(value.type.tensor_type.shape.dim)
        if rank > MAX_RANK:
            raise ModelFileError(f"{path}: input {value.name!r} has {rank} dimensions, over bnnmip's limit of "
                                 f"{MAX_RANK}")
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:] if d.HasField("dim_value")]
        count = 1
        for d in dims:
            count *= max(d, 1)
        if count > MAX_INPUT_FEATURES:
            raise ModelFileError(
                f"{path}: input {value.name!r} declares {count:,} values per example, over bnnmip's limit of "
                f"{MAX_INPUT_FEATURES:,}; refused before allocating"
            )


def node_label(node: onnx.NodeProto) -> str:
    """``node 'name' (OpType)`` for messages: the name, else its first named output, else '<unnamed>'."""
    name = node.name or next((o for o in node.output if o), "") or "<unnamed>"
    return f"node {name!r} ({node.op_type})"


def _check_structure(graph: onnx.GraphProto, path: Path) -> None:
    """Every tensor defined once, every node input defined, no cycle: with the names at fault.

    (The ONNX checker also rejects these, but only as "not topologically sorted".)
    """
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        if not any(node.output):
            raise ModelFileError(f"{path}: {node_label(node)} has no outputs")
        for out in node.output:
            if not out:
                continue
            if out in producer or out in defined:
                raise ModelFileError(f"{path}: {node_label(node)}: tensor {out!r} is defined twice")
            producer[out] = i
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in producer:
                raise ModelFileError(
                    f"{path}: {node_label(node)}: input {name!r} is not a graph input, an initializer or the output "
                    "of any node (a dangling input)"
                )
    for value in graph.output:
        if value.name not in defined and value.name not in producer:
            raise ModelFileError(f"{path}: graph output {value.name!r} is not produced by any node")
    cycle = _find_cycle(graph, producer)
    if cycle:
        names = " -> ".join(node_label(graph.node[i]) for i in cycle)
        raise ModelFileError(f"{path}: the graph has a cycle: {names}")


def _find_cycle(graph: onnx.GraphProto, producer: dict[str, int]) -> list[int]:
    """Indices of nodes on one cycle (first node repeated at the end), or [] (iterative DFS)."""
    deps = [sorted({producer[n] for n in node.input if n in producer}) for node in graph.node]
    state = [0] * len(deps)  # 0 new, 1 on the stack, 2 done
    for root in range(len(deps)):
        if state[root]:
            continue
        stack, path = [(root, iter(deps[root]))], [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[child] == 1:
                return path[path.index(child):] + [child]
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(deps[child])))
                path.append(child)
    return []


def _check_opset(model: onnx.ModelProto, path: Path, custom_ops: frozenset[tuple[str, str]]) -> None:
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise UnsupportedModelError(f"{path}: no opset for the default ONNX domain is declared")
    version = versions[0]
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path}: opset {version} is outside the range bnnmip reads ({MIN_OPSET}..{MAX_OPSET})"
        )
    others = sorted({op.domain for op in model.opset_import} - {"", "ai.onnx"})
    used = {node.domain for node in model.graph.node if (node.domain, node.op_type) not in custom_ops}
    used -= {"", "ai.onnx"}
    if used:
        raise UnsupportedModelError(f"{path}: nodes from custom operator domains {sorted(used)} (declared {others})")


def _refuse_containers(model: onnx.ModelProto, path: Path) -> None:
    """Refuse what could hold graphs or tensors bnnmip does not walk: subgraphs, functions, training info."""
    if len(model.functions):
        raise UnsupportedModelError(f"{path}: model-local functions ({model.functions[0].name!r}, ...) are not "
                                    "supported")
    if len(model.training_info):
        raise UnsupportedModelError(f"{path}: training_info (a training graph) is not supported")
    for node in model.graph.node:
        if node.overload:
            raise UnsupportedModelError(f"{path}: {node_label(node)}: function overloads are not supported")
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or attr.HasField("g") \
                    or len(attr.graphs):
                raise UnsupportedModelError(f"{path}: {node_label(node)}: subgraphs are not supported")
            if attr.ref_attr_name:
                raise UnsupportedModelError(f"{path}: {node_label(node)}: attribute {attr.name!r} refers to a "
                                            "function attribute outside a function")


def every_tensor(message):
    """Every ``TensorProto`` anywhere inside a protobuf message (sparse tensors' values and indices too).

    A reflective walk over the set fields, not a list of known places: a tensor in a field
    bnnmip does not use still goes through the same checks.
    """
    stack = [message]
    while stack:
        current = stack.pop()
        if isinstance(current, TensorProto):
            yield current
            continue
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if isinstance(value, Message):
                stack.append(value)
            elif not field.message_type.GetOptions().map_entry:  # repeated; string maps hold no tensors
                stack.extend(value)


def _check_tensor(tensor: TensorProto, path: Path, budget: list[int]) -> None:
    """Refuse a tensor whose declared size is huge or disagrees with its data, before allocating it."""
    name = tensor.name or "<unnamed>"
    dims = list(tensor.dims)
    if len(dims) > MAX_RANK:
        raise ModelFileError(f"{path}: tensor {name!r} has {len(dims)} dimensions, over bnnmip's limit of {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise ModelFileError(f"{path}: tensor {name!r} declares a negative dimension {dims}")
    count = 1
    for d in dims:
        count *= d
        if count > MAX_TENSOR_ELEMENTS:
            raise ModelFileError(
                f"{path}: tensor {name!r} declares shape {dims}, over bnnmip's limit of "
                f"{MAX_TENSOR_ELEMENTS:,} elements; refused before allocating it"
            )
    if tensor.HasField("segment"):
        raise ModelFileError(f"{path}: tensor {name!r} is a segment of a larger tensor, which bnnmip does not read")
    if tensor.data_type not in _TYPED_FIELD:
        known = tensor.data_type in TensorProto.DataType.values()
        kind = TensorProto.DataType.Name(tensor.data_type) if known else str(tensor.data_type)
        raise ModelFileError(f"{path}: tensor {name!r} has data type {kind}, which bnnmip does not read")
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if tensor.data_location == TensorProto.EXTERNAL:
        _load_external(tensor, path, count * itemsize, budget)
    elif tensor.data_location != TensorProto.DEFAULT:
        raise ModelFileError(f"{path}: tensor {name!r} has an unknown data location {tensor.data_location}")
    elif tensor.external_data:
        raise ModelFileError(f"{path}: tensor {name!r} has external_data entries but is not stored externally")
    raw = tensor.HasField("raw_data")
    stored = len(tensor.raw_data) if raw else len(getattr(tensor, _TYPED_FIELD[tensor.data_type]))
    expected = count * itemsize if raw else count
    if stored != expected:
        raise ModelFileError(
            f"{path}: tensor {name!r} declares shape {dims} but holds {stored} "
            f"{'bytes' if raw else 'values'}, expected {expected}"
        )


def _load_external(tensor: TensorProto, path: Path, nbytes: int, budget: list[int]) -> None:
    """Read external data only from a regular file inside the model's folder, then inline it.

    The location must be relative, without ``..`` and without a symbolic link anywhere on the
    way; anything else is refused before any file is opened.  The file is opened with
    ``O_NOFOLLOW`` and checked to be a regular file through the open descriptor.
    """
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    name = tensor.name or "<unnamed>"
    shown = location if len(location) <= 80 else location[:60] + "..." + location[-17:]
    where = f"{path}: tensor {name!r} points to external data {shown!r}"
    if not location or os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        raise ModelFileError(f"{where}: an absolute or empty location is refused")
    if "\0" in location:
        raise ModelFileError(f"{where}: a location with a NUL character is refused")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelFileError(f"{where}: a location outside the model's folder is refused")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError as e:
        raise ModelFileError(f"{where}: offset/length are not integers") from e
    if length != nbytes or offset < 0:
        raise ModelFileError(f"{where}: offset {offset} and length {length} do not fit the declared shape")
    budget[0] -= length
    if budget[0] < 0:
        raise ModelFileError(f"{where}: external data exceeds bnnmip's limit of {MAX_MODEL_BYTES:,} bytes")
    try:
        tensor.raw_data = _read_inside(path.resolve().parent, parts, offset, length, where)
    except OSError as e:  # a name too long, a permission, a file that vanished
        raise ModelFileError(f"{where}: cannot read it ({e.strerror or e})") from e
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def _read_inside(folder: Path, parts: tuple[str, ...], offset: int, length: int, where: str) -> bytes:
    current = folder
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise ModelFileError(f"{where}: symbolic links are refused")
    if not current.is_file() or folder not in current.resolve().parents:
        raise ModelFileError(f"{where}: no such file inside the model's folder")
    fd = os.open(current, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"{where}: not a regular file")
        if offset + length > info.st_size:
            raise ModelFileError(f"{where}: offset {offset} and length {length} run past the end of the file")
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ModelFileError(f"{where}: the file ended early")
    return data


def _densify_sparse(model: onnx.ModelProto, path: Path) -> None:
    """Sparse initializers and Constant ``sparse_value`` s become dense tensors; other sparse tensors are refused.

    Their values and indices were already checked (and inlined) as tensors; here the dense shape
    is checked against the element limit and every index against it, before allocating.
    """
    graph = model.graph
    for sparse in graph.sparse_initializer:
        graph.initializer.append(_dense(sparse, path))
    del graph.sparse_initializer[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS) \
                    or attr.HasField("sparse_tensor") or len(attr.sparse_tensors):
                if node.op_type != "Constant" or attr.name != "sparse_value" or len(attr.sparse_tensors):
                    raise UnsupportedModelError(f"{path}: {node_label(node)}: sparse tensor attribute {attr.name!r} "
                                                "is not supported")
                dense = _dense(attr.sparse_tensor, path)
                attr.Clear()
                attr.CopyFrom(helper.make_attribute("value", dense))


def _dense(sparse: onnx.SparseTensorProto, path: Path) -> TensorProto:
    name = sparse.values.name or "<unnamed>"
    dims = list(sparse.dims)
    count = 1
    for d in dims:
        count *= max(d, 0)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims) or count > MAX_TENSOR_ELEMENTS:
        raise ModelFileError(f"{path}: sparse tensor {name!r} declares shape {dims}, refused (limit "
                             f"{MAX_TENSOR_ELEMENTS:,} elements, {MAX_RANK} dimensions)")
    values, indices = tensor_to_array(sparse.values), tensor_to_array(sparse.indices)
    if values.ndim != 1 or indices.dtype != np.int64 or indices.shape not in ((len(values),), (len(values), len(dims))):
        raise ModelFileError(f"{path}: sparse tensor {name!r}: values of shape {values.shape} and int64 indices "
                             f"of shape {indices.shape} do not describe a tensor of shape {dims}")
    if indices.ndim == 2:  # coordinates: every one inside the shape, then linearised
        if np.any(indices < 0) or np.any(indices >= np.asarray(dims, np.int64)):
            raise ModelFileError(f"{path}: sparse tensor {name!r}: an index lies outside the shape {dims}")
        indices = np.ravel_multi_index(tuple(indices.T), dims) if dims else np.zeros(0, np.int64)
    if np.any(indices < 0) or np.any(indices >= count) or len(np.unique(indices)) != len(indices):
        raise ModelFileError(f"{path}: sparse tensor {name!r}: indices out of range or repeated for shape {dims}")
    dense = np.zeros(count, values.dtype)
    dense[indices] = values
    return onnx.numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


def tensor_to_array(tensor: TensorProto) -> np.ndarray:
    """A validated tensor as a numpy array (keeps its ONNX dtype)."""
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises ValueError/TypeError on data it cannot convert
        raise ModelFileError(f"tensor {tensor.name or '<unnamed>'!r}: cannot read its data ({e})") from e
