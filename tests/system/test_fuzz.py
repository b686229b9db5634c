"""Fuzzing the ONNX reader with hypothesis (issue 7).

1. Random BNN shapes and parameters, written in every pattern :mod:`bnnmip.io.onnx_writer` knows,
   load and agree with onnxruntime (:func:`bnnmip.check_onnx`).
2. Random corruptions of valid files (byte flips, truncations, insertions, and protobuf edits:
   op types, dims, data types, names, attributes, values, opsets, external data) either load, and
   then agree with onnxruntime, or raise a :class:`bnnmip.BnnmipError`; nothing else escapes.

The number of examples is small by default (the suite must stay fast); set
``BNNMIP_FUZZ_EXAMPLES=N`` for a long randomised run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from bnnmip import BnnmipError, check_onnx, load_onnx
from bnnmip.io.onnx_writer import Pattern, random_params, to_onnx
from tests.helpers import slow

_LONG = "BNNMIP_FUZZ_EXAMPLES" in os.environ
_EXAMPLES = int(os.environ.get("BNNMIP_FUZZ_EXAMPLES", "0"))


def _settings(default: int):
    return settings(max_examples=_EXAMPLES or default, deadline=None, derandomize=not _LONG, database=None,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------- random networks, every pattern
@st.composite
def networks(draw):
    """(params, pattern, levels): a random small BNN and how to spell it in ONNX."""
    seed = draw(st.integers(0, 2**32 - 1))
    input_shape = draw(st.sampled_from([(), (2, 3), (1, 2, 4), (3, 3)]))
    n_inputs = int(np.prod(input_shape)) if input_shape else draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    n_classes = draw(st.integers(2, 5))
    input_binarization = draw(st.booleans())
    params = random_params(
        np.random.default_rng(seed), n_inputs, widths, n_classes,
        input_binarization=input_binarization,
        real_first_layer=not input_binarization and draw(st.booleans()),
        zero_gamma=draw(st.sampled_from([0.0, 0.0, 0.3])),
        negative_gamma=draw(st.sampled_from([0.0, 0.3, 1.0])),
        input_shape=input_shape,
    )
    pattern = Pattern(
        linear=draw(st.sampled_from(["matmul", "gemm"])),
        bn=draw(st.sampled_from(["bn", "mul_add", "sub_div"])),
        act=draw(st.sampled_from(["sign", "where_ge", "where_less"])),
        weights=draw(st.sampled_from(["int8", "float", "sign_latent"])),
        softmax=draw(st.sampled_from(["", "softmax", "logsoftmax"])),
        flatten=draw(st.sampled_from(["flatten", "reshape"])),
        opset=draw(st.sampled_from([13, 14, 15, 17, 18, 19, 20, 21])),
        output_bn=draw(st.booleans()),
    )
    if pattern.act == "sign":  # ONNX Sign(0) = 0: a constant unit (γ = 0) must not sit exactly on 0
        for _, beta, _, _ in params.batch_norms + ([params.input_bn] if params.input_bn else []):
            beta[beta == 0] = 0.5
    return params, pattern, draw(st.sampled_from([None, 255, 7]))


def _inputs(net, levels: int | None, seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.random((n, net.n_inputs))
    if levels:
        X = np.round(X * levels) / levels
    X[:4] = np.array([0.0, 1.0, 0.5, 0.25])[:, None]  # the corners and the middle of the range
    return X


@slow  # 60 random networks through onnxruntime
@_settings(60)
@given(networks())
def test_random_networks_match_onnxruntime(tmp_path_factory, case):
    params, pattern, levels = case
    path = tmp_path_factory.mktemp("net") / "net.onnx"
    onnx.save(to_onnx(params, pattern), str(path))
    net = load_onnx(path, levels=levels)
    assert net.depth == len(params.weights) and net.n_classes == len(params.out_bias)
    check = check_onnx(net, _inputs(net, levels, 0))
    assert check.ok, f"{pattern}: {check}"


# ---------------------------------------------------------------------- corrupted files
_BASE_PATTERNS = [
    Pattern(),
    Pattern(linear="gemm", bn="mul_add", act="sign", weights="sign_latent", softmax="softmax"),
    Pattern(bn="sub_div", act="where_less", weights="float", flatten="reshape", output_bn=True),
]
_OPS = ["Relu", "Conv", "Sign", "Where", "Add", "Sub", "Mul", "Div", "Neg", "MatMul", "Gemm", "Identity", "Softmax",
        "Cast", "Flatten", "Reshape", "Transpose", "BatchNormalization", "GreaterOrEqual", "Less", "Greater", "If",
        "Loop", "Constant", "Squeeze", "Unsqueeze", "Abs", "Dropout", "Tanh", "Expand", "Backdoor", ""]
_SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 1e-45, 1e38, -3.4e38, 0.5]


def _bases() -> list[bytes]:
    out = []
    for i, pattern in enumerate(_BASE_PATTERNS):
        rng = np.random.default_rng(100 + i)
        shape = (2, 3) if pattern.flatten == "reshape" else ()
        params = random_params(rng, 6, [5, 4], 3, input_binarization=i == 1, input_shape=shape, zero_gamma=0.2)
        if pattern.act == "sign":
            for _, beta, _, _ in params.batch_norms + [params.input_bn]:
                beta[beta == 0] = 0.5
        out.append(to_onnx(params, pattern).SerializeToString())
    return out


BASES = _bases()


def _tensors(model: onnx.ModelProto) -> list[TensorProto]:
    found = list(model.graph.initializer)
    for node in model.graph.node:
        found += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    return found


def _names(model: onnx.ModelProto) -> list[str]:
    names = [v.name for v in model.graph.input] + [t.name for t in model.graph.initializer]
    return names + [o for n in model.graph.node for o in n.output] + ["ghost", ""]


def _edit_proto(data: bytes, draw) -> bytes:
    """One protobuf-level edit of a serialized model (the kind a careless or hostile tool makes)."""
    model = onnx.ModelProto.FromString(data)
    g = model.graph
    kind = draw(st.sampled_from(["op_type", "dims", "data_type", "input", "output", "remove_node", "duplicate_node",
                                 "swap_nodes", "attribute", "values", "opset", "ir_version", "graph_input",
                                 "external", "domain", "raw_bytes"]))
    node = g.node[draw(st.integers(0, len(g.node) - 1))] if len(g.node) else None
    tensors = _tensors(model)
    tensor = tensors[draw(st.integers(0, len(tensors) - 1))] if tensors else None
    if kind == "op_type" and node is not None:
        node.op_type = draw(st.sampled_from(_OPS))
    elif kind == "dims" and tensor is not None:
        dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6, -1, 2**31, 2**62]), max_size=4))
        del tensor.dims[:]
        tensor.dims.extend(dims)
    elif kind == "data_type" and tensor is not None:
        tensor.data_type = draw(st.integers(0, 25))
    elif kind == "input" and node is not None and len(node.input):
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(_names(model)))
    elif kind == "output" and node is not None:
        node.output[0] = draw(st.sampled_from(_names(model)))
    elif kind == "remove_node" and node is not None:
        g.node.remove(node)
    elif kind == "duplicate_node" and node is not None:
        g.node.insert(draw(st.integers(0, len(g.node))), node)
    elif kind == "swap_nodes" and len(g.node) > 1:
        i, j = draw(st.integers(0, len(g.node) - 1)), draw(st.integers(0, len(g.node) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif kind == "attribute" and node is not None:
        _edit_attribute(node, draw)
    elif kind == "values" and tensor is not None:
        _edit_values(tensor, draw)
    elif kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([1, 6, 7, 11, 12, 13, 16, 21, 22, 27, 28, 29, 10**6]))
    elif kind == "ir_version":
        model.ir_version = draw(st.sampled_from([0, 1, 3, 4, 7, 9, 10, 11, 99]))
    elif kind == "graph_input":
        t = g.input[0].type.tensor_type
        if draw(st.booleans()):
            t.elem_type = draw(st.integers(0, 25))
        elif len(t.shape.dim) > 1:
            t.shape.dim[draw(st.integers(0, len(t.shape.dim) - 1))].dim_value = draw(
                st.sampled_from([0, 1, 2, 5, 6, 7, 784, 2**20, 2**40]))
    elif kind == "external" and tensor is not None:
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key = draw(st.sampled_from(["location", "offset", "length", "checksum"]))
        entry.value = draw(st.sampled_from(["../x", "/etc/hostname", "x.bin", "", "a" * 300, "0", "-4", "1e9",
                                            "sub/../../y", "\\\\server\\share", "C:\\x", "nul\x00byte"]))
    elif kind == "domain" and node is not None:
        node.domain = draw(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "custom"]))
    elif kind == "raw_bytes" and tensor is not None and tensor.HasField("raw_data"):
        raw = bytearray(tensor.raw_data)
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        tensor.raw_data = bytes(raw)
    return model.SerializeToString()


def _edit_attribute(node: onnx.NodeProto, draw) -> None:
    if len(node.attribute) and draw(st.booleans()):
        attr = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        if draw(st.booleans()):
            node.attribute.remove(attr)
        elif attr.type == onnx.AttributeProto.INT:
            attr.i = draw(st.sampled_from([-2, -1, 0, 1, 2, 3, 9, 2**40]))
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = draw(st.sampled_from(_SPECIAL))
        elif attr.type == onnx.AttributeProto.INTS:
            attr.ints[:] = draw(st.lists(st.integers(-3, 3), max_size=4))
        else:
            attr.type = draw(st.integers(0, 14))
    else:
        name = draw(st.sampled_from(["axis", "transA", "transB", "alpha", "beta", "epsilon", "to", "perm",
                                     "training_mode", "allowzero", "value", "momentum"]))
        value = draw(st.sampled_from([0, 1, -1, 2, 0.5, 1e38, [1, 0], [0]]))
        node.attribute.append(helper.make_attribute(name, value))


def _edit_values(tensor: TensorProto, draw) -> None:
    try:
        value = numpy_helper.to_array(tensor).copy()
    except Exception:  # noqa: BLE001 - an earlier edit may have broken it already
        return
    if value.size == 0 or value.dtype.kind not in "fiub":
        return
    flat = value.reshape(-1)
    special = draw(st.sampled_from(_SPECIAL))
    if value.dtype.kind != "f":
        special = draw(st.sampled_from([0, 1, -1, 2, 127, -128]))
    with np.errstate(all="ignore"):
        flat[draw(st.integers(0, flat.size - 1))] = np.asarray(special).astype(value.dtype)
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def _corrupt(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete"] + ["proto"] * 7))
    if kind == "proto":
        try:
            return _edit_proto(data, draw)
        except Exception:  # noqa: BLE001 - the bytes may no longer parse after an earlier byte edit
            kind = "flip"
    buf = bytearray(data)
    pos = draw(st.integers(0, max(len(buf) - 1, 0)))
    if kind == "flip" and buf:
        buf[pos] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "insert":
        buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        del buf[pos:pos + draw(st.integers(1, 16))]
    return bytes(buf)


def check_corrupted(data: bytes, folder: Path) -> str:
    """Load ``data``: 'loaded' (and parity holds) or 'refused: <error class>'; anything else fails."""
    path = folder / "corrupt.onnx"
    path.write_bytes(data)
    try:
        net = load_onnx(path)
    except BnnmipError as e:
        return f"refused: {type(e).__name__}"
    X = np.random.default_rng(0).random((200, net.n_inputs))
    X[:3] = np.array([0.0, 1.0, 0.5])[:, None]
    check = check_onnx(net, X)
    assert check.ok, f"loaded a corrupted model that disagrees with onnxruntime: {check}"
    return "loaded"


@_settings(150)
@given(st.data())
def test_corrupted_files_load_or_raise_bnnmip_errors(tmp_path_factory, data):
    raw = BASES[data.draw(st.integers(0, len(BASES) - 1))]
    for _ in range(data.draw(st.integers(1, 3))):
        raw = _corrupt(raw, data.draw)
    event(check_corrupted(raw, tmp_path_factory.mktemp("corrupt")))


@pytest.mark.parametrize("base", range(len(BASES)))
def test_every_truncation_of_the_header(tmp_path, base):
    """Every prefix of the first 256 bytes: never an escape (protobuf's partial messages)."""
    data = BASES[base]
    for n in range(0, min(256, len(data)), 3):
        check_corrupted(data[:n], tmp_path)
