"""Reading an ONNX file safely: limits, external-data policy, opset range, structural checks.

bnnmip never executes code from a model file.  Before anything is allocated or passed to onnx's
checker, this module refuses files that are too large, graphs with too many nodes, tensors whose
declared shape is huge or disagrees with their data (or whose element type is not numeric),
inputs declaring huge examples, and external data that is not a plain file inside the model's
own folder (absolute paths, ``..`` components and symlinks are refused, never read).  Cycles,
dangling inputs and tensors defined twice are reported with the node at fault.  See SECURITY.md.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelFileError, UnsupportedModelError

MAX_MODEL_BYTES = 512 * 2**20  # the model file plus its external data
MAX_TENSOR_ELEMENTS = 64 * 2**20
MAX_INPUT_FEATURES = 16 * 2**20  # values per input (the reader keeps a few float64 arrays of this size)
MAX_NODES = 100_000  # a BNN has about ten nodes per layer
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
    _check_opset(model, path, frozenset(custom_ops))
    budget = [MAX_MODEL_BYTES - size]
    for tensor in _all_tensors(model.graph):
        _check_tensor(tensor, path, budget)
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
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:] if d.HasField("dim_value")]
        count = 1
        for d in dims:
            count *= max(d, 1)
        if count > MAX_INPUT_FEATURES:
            raise ModelFileError(
                f"{path}: input {value.name!r} declares {count:,} values per example, over bnnmip's limit of "
                f"{MAX_INPUT_FEATURES:,}; refused before allocating"
            )


def _node_name(node: onnx.NodeProto) -> str:
    return f"node {(node.name or (node.output[0] if node.output else '') or '<unnamed>')!r} ({node.op_type})"


def _check_structure(graph: onnx.GraphProto, path: Path) -> None:
    """Every tensor defined once, every node input defined, no cycle: with the names at fault.

    (The ONNX checker also rejects these, but only as "not topologically sorted".)
    """
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producer or out in defined:
                raise ModelFileError(f"{path}: {_node_name(node)}: tensor {out!r} is defined twice")
            producer[out] = i
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in producer:
                raise ModelFileError(
                    f"{path}: {_node_name(node)}: input {name!r} is not a graph input, an initializer or the output "
                    "of any node (a dangling input)"
                )
    for value in graph.output:
        if value.name not in defined and value.name not in producer:
            raise ModelFileError(f"{path}: graph output {value.name!r} is not produced by any node")
    cycle = _find_cycle(graph, producer)
    if cycle:
        names = " -> ".join(_node_name(graph.node[i]) for i in cycle)
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


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and the tensors held in node attributes (Constant values)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                raise UnsupportedModelError(
                    f"node {node.name or node.output[0]!r} ({node.op_type}): subgraphs are not supported"
                )


def _check_tensor(tensor: TensorProto, path: Path, budget: list[int]) -> None:
    """Refuse a tensor whose declared size is huge or disagrees with its data, before allocating it."""
    name = tensor.name or "<unnamed>"
    dims = list(tensor.dims)
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


def tensor_to_array(tensor: TensorProto) -> np.ndarray:
    """A validated tensor as a numpy array (keeps its ONNX dtype)."""
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises ValueError/TypeError on data it cannot convert
        raise ModelFileError(f"tensor {tensor.name or '<unnamed>'!r}: cannot read its data ({e})") from e
