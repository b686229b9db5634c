"""Reading an ONNX file safely: limits, external-data policy, opset range, structural checks.

bnnmip never executes code from a model file.  Before anything is allocated or passed to onnx's
checker, this module refuses files that are too large, initializers whose declared shape is
huge or disagrees with their data, and external data that is not a plain file inside the
model's own folder (absolute paths, ``..`` components and symlinks are refused, never read).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelFileError, UnsupportedModelError

MAX_MODEL_BYTES = 512 * 2**20  # the model file plus its external data
MAX_TENSOR_ELEMENTS = 64 * 2**20
MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse and validate ``path``; external data is checked, read and inlined.

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
    _check_opset(model, path)
    budget = [MAX_MODEL_BYTES - size]
    for tensor in _all_tensors(model.graph):
        _check_tensor(tensor, path, budget)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, Exception) as e:
        raise ModelFileError(f"{path}: invalid ONNX model: {str(e).strip().splitlines()[0]}") from e
    return model


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise UnsupportedModelError(f"{path}: no opset for the default ONNX domain is declared")
    version = versions[0]
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path}: opset {version} is outside the range bnnmip reads ({MIN_OPSET}..{MAX_OPSET})"
        )
    others = sorted({op.domain for op in model.opset_import} - {"", "ai.onnx"})
    used = {node.domain for node in model.graph.node} - {"", "ai.onnx"}
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
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: tensor {name!r} has an unknown data type {tensor.data_type}") from e
    if tensor.data_location == TensorProto.EXTERNAL:
        _load_external(tensor, path, count * itemsize, budget)
    elif tensor.HasField("raw_data") or tensor.data_type in (TensorProto.FLOAT, TensorProto.INT8):
        stored = len(tensor.raw_data) if tensor.HasField("raw_data") else _typed_length(tensor)
        expected = count * itemsize if tensor.HasField("raw_data") else count
        if stored != expected and not (stored == 0 and count == 0):
            raise ModelFileError(
                f"{path}: tensor {name!r} declares shape {dims} but holds {stored} "
                f"{'bytes' if tensor.HasField('raw_data') else 'values'}, expected {expected}"
            )


def _typed_length(tensor: TensorProto) -> int:
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        n = len(getattr(tensor, field))
        if n:
            return n
    return 0


def _load_external(tensor: TensorProto, path: Path, nbytes: int, budget: list[int]) -> None:
    """Read external data only from a regular file inside the model's folder, then inline it."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    name = tensor.name or "<unnamed>"
    where = f"{path}: tensor {name!r} points to external data {location!r}"
    if not location or os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        raise ModelFileError(f"{where}: an absolute or empty location is refused")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelFileError(f"{where}: a location outside the model's folder is refused")
    folder = path.resolve().parent
    current = folder
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise ModelFileError(f"{where}: symbolic links are refused")
    if not current.is_file() or folder not in current.resolve().parents:
        raise ModelFileError(f"{where}: no such file inside the model's folder")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError as e:
        raise ModelFileError(f"{where}: offset/length are not integers") from e
    if length != nbytes or offset < 0 or offset + length > current.stat().st_size:
        raise ModelFileError(f"{where}: offset {offset} and length {length} do not fit the declared shape and file")
    budget[0] -= length
    if budget[0] < 0:
        raise ModelFileError(f"{where}: external data exceeds bnnmip's limit of {MAX_MODEL_BYTES:,} bytes")
    with open(current, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def tensor_to_array(tensor: TensorProto) -> np.ndarray:
    """A validated tensor as a numpy array (keeps its ONNX dtype)."""
    return onnx.numpy_helper.to_array(tensor)
