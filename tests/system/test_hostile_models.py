"""Hostile model files, round two (issue 15): each class of attack on the reader, by its mechanism.

Findings covered: 1 (no file read through a model: every tensor kind goes through one reader),
2 (folding means what onnxruntime computes), 5 (nothing off the layer chain reaches onnxruntime
unchecked), 6 (limits on what a file declares: folding memory, layers, rank) and 9 (one-line
errors).  The models are built here, with real onnx and onnxruntime; each test states a property
of the mechanism and probes it with inputs the bad-input catalogue does not contain.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnmip import BnnmipError, InvalidArgumentError, UnsupportedModelError, check_onnx, load_onnx
from bnnmip.io import onnx_file
from bnnmip.io.onnx_reader import fold as folding
from bnnmip.io.onnx_writer import Pattern, random_params, to_onnx

N_IN, WIDTHS, K = 6, [5, 4], 3
SECRET = b"BNNMIP-SECRET-" + b"0123456789abcdef" * 4


def _model(seed: int = 0, **pattern) -> onnx.ModelProto:
    """A valid 6 -> 5 -> 4 -> 3 BNN (int8 hidden weights cast to float, BN, Where binarizers)."""
    return to_onnx(random_params(np.random.default_rng(seed), N_IN, WIDTHS, K), Pattern(**pattern))


def _save(folder: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _init(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _message(call) -> str:
    """The one-line message of the BnnmipError ``call()`` raises."""
    with pytest.raises(BnnmipError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    return text


def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _sparse(values: np.ndarray, indices: np.ndarray, dims: list[int], name: str) -> onnx.SparseTensorProto:
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(values, name))
    sparse.indices.CopyFrom(numpy_helper.from_array(indices.astype(np.int64), name + "_indices"))
    sparse.dims.extend(dims)
    return sparse


# ====================================================================== finding 1: one tensor reader
@pytest.fixture
def secret_cwd(tmp_path, monkeypatch) -> Path:
    """The current folder holds a secret (as a home folder holds .ssh/id_rsa); models live elsewhere."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "id_rsa").write_bytes(SECRET)
    monkeypatch.chdir(home)
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def _sparse_initializer_model(location: str | None) -> onnx.ModelProto:
    """The first BN mean replaced by a sparse initializer (its values external at ``location``)."""
    model = _model()
    mean = _init(model, "mean_6")
    dense = numpy_helper.to_array(mean)
    model.graph.initializer.remove(mean)
    sparse = _sparse(dense.astype(np.float32), np.arange(5), [5], "mean_6")
    if location is not None:
        _external(sparse.values, location)
    model.graph.sparse_initializer.append(sparse)
    return model


def _sparse_constant_model(location: str) -> onnx.ModelProto:
    """A Constant node whose sparse_value is external, feeding the first batch norm's mean."""
    model = _model()
    mean = _init(model, "mean_6")
    model.graph.initializer.remove(mean)
    sparse = _sparse(np.zeros(4, np.float32), np.arange(4), [5], "leak_values")
    _external(sparse.values, location)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["mean_6"], name="leak", sparse_value=sparse))
    return model


def _attribute_list_model(location: str) -> onnx.ModelProto:
    """An external tensor hidden in a TENSORS attribute list of an otherwise harmless node."""
    model = _model()
    hidden = _external(numpy_helper.from_array(np.zeros(4, np.float32), "hidden"), location)
    node = next(n for n in model.graph.node if n.op_type == "Identity")
    node.attribute.append(helper.make_attribute("payload", [hidden]))
    return model


@pytest.mark.parametrize("build", [_sparse_initializer_model, _sparse_constant_model, _attribute_list_model],
                         ids=["sparse_initializer", "constant_sparse_value", "tensor_list_attribute"])
@pytest.mark.parametrize("location", ["id_rsa", "../home/id_rsa", "/etc/hostname"])
def test_no_tensor_kind_reads_outside_the_model_folder(secret_cwd, build, location):
    """Relative to the current folder, a parent or absolute: refused, and the secret never shows."""
    path = _save(secret_cwd, build(location))
    message = _message(lambda: load_onnx(path))
    assert "SECRET" not in message and "0123456789abcdef" not in message
    assert "external data" in message and repr(location) in message


def test_a_sparse_initializer_inside_the_folder_is_read_like_a_dense_one(tmp_path):
    dense = load_onnx(_save(tmp_path, _model(), "dense.onnx"))
    model = _sparse_initializer_model("mean.bin")
    (tmp_path / "mean.bin").write_bytes(numpy_helper.to_array(_init(_model(), "mean_6")).astype(np.float32).tobytes())
    sparse = load_onnx(_save(tmp_path, model, "sparse.onnx"))
    X = np.random.default_rng(1).random((300, N_IN))
    assert np.array_equal(dense.logits(X), sparse.logits(X))
    assert check_onnx(sparse, X).ok  # onnxruntime runs the densified, inline model


@pytest.mark.parametrize("indices, dims, fragment", [
    (np.array([0, 1, 2, 9]), [5], "indices out of range"),
    (np.array([0, 1, 1, 2]), [5], "indices out of range or repeated"),
    (np.arange(4), [2**20, 2**20], "refused"),
], ids=["index_past_the_end", "repeated_index", "huge_dense_shape"])
def test_malformed_sparse_tensors_are_refused(tmp_path, indices, dims, fragment):
    model = _model()
    model.graph.sparse_initializer.append(_sparse(np.ones(4, np.float32), indices, dims, "unused"))
    assert fragment in _message(lambda: load_onnx(_save(tmp_path, model)))


def test_a_tensor_segment_is_refused(tmp_path):
    model = _model()
    tensor = _init(model, "mean_6")
    tensor.segment.begin, tensor.segment.end = 0, 5
    assert "segment" in _message(lambda: load_onnx(_save(tmp_path, model)))


@pytest.mark.parametrize("part", ["functions", "training_info"])
def test_places_that_hide_graphs_are_refused(tmp_path, part):
    model = _model()
    if part == "functions":
        model.functions.append(onnx.FunctionProto(name="Sign", domain="", input=["x"], output=["y"]))
    else:
        model.training_info.append(onnx.TrainingInfoProto())
    with pytest.raises(UnsupportedModelError, match=part.replace("_", "[ _]") if part == "training_info" else "func"):
        load_onnx(_save(tmp_path, model))


# ====================================================================== finding 2: folding = onnxruntime
def _hidden_weight_through_div(tmp_path: Path, numerator: np.ndarray, denominator: int, name: str) -> Path:
    """The hidden layer's weight as Cast(Div(numerator, denominator)) with int32 constants."""
    model = _model()
    node = next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "W_14")
    model.graph.initializer.remove(_init(model, "W_14"))
    model.graph.initializer.extend([numpy_helper.from_array(numerator.astype(np.int32), "numerator"),
                                    numpy_helper.from_array(np.array(denominator, np.int32), "denominator")])
    model.graph.node.insert(0, helper.make_node("Div", ["numerator", "denominator"], ["W_14"], name="halve"))
    node.input[0] = "W_14"
    return _save(tmp_path, model, name)


def _hidden_signs() -> np.ndarray:
    return numpy_helper.to_array(_init(_model(), "W_14")).astype(np.int32)


def test_integer_div_folds_as_onnx_truncates(tmp_path):
    """Cast(Div(W, 2)) with W in {-1, 2}: ONNX gives {0, 1} (not a BNN); numpy's floor gave ±1 (issue 15.2)."""
    signs = _hidden_signs()
    path = _hidden_weight_through_div(tmp_path, np.where(signs > 0, 2, -1), 2, "floor.onnx")
    assert "must be ±1, found 0" in _message(lambda: load_onnx(path))
    exact = load_onnx(_hidden_weight_through_div(tmp_path, 3 * signs, 3, "exact.onnx"))
    reference = load_onnx(_save(tmp_path, _model(), "reference.onnx"))
    X = np.random.default_rng(2).random((300, N_IN))
    assert np.array_equal(exact.logits(X), reference.logits(X)) and check_onnx(exact, X).ok


def test_a_folder_that_disagrees_with_onnxruntime_is_caught(tmp_path, monkeypatch):
    """The mechanism, not the Div fix: put numpy's floor division back and the model is still refused."""
    monkeypatch.setitem(folding.FOLDERS, "Div", lambda x, at, opset: [x[0] // x[1]])
    signs = _hidden_signs()
    path = _hidden_weight_through_div(tmp_path, np.where(signs > 0, 2, -1), 2, "floor.onnx")
    message = _message(lambda: load_onnx(path))
    assert "node 'halve' (Div)" in message and "onnxruntime computes" in message


def _fold_model(nodes: list[onnx.NodeProto], inits: list[TensorProto], weight: str) -> onnx.ModelProto:
    """The tiny BNN whose hidden weight is the constant ``weight`` computed by ``nodes`` from ``inits``."""
    model = _model()
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "W_14")
    cast.input[0] = weight
    model.graph.initializer.extend(inits)
    for i, node in enumerate(nodes):
        model.graph.node.insert(i, node)
    return model


_INT_MIN = np.iinfo(np.int32).min
CRASHERS = {
    "division_by_zero": ([helper.make_node("Div", ["a", "b"], ["q"], name="crash")],
                         [numpy_helper.from_array(np.ones((5, 4), np.int32), "a"),
                          numpy_helper.from_array(np.array(0, np.int32), "b")], "integer division by zero"),
    "int_min_by_minus_one": ([helper.make_node("Div", ["a", "b"], ["q"], name="crash")],
                             [numpy_helper.from_array(np.full((5, 4), _INT_MIN, np.int32), "a"),
                              numpy_helper.from_array(np.array(-1, np.int32), "b")], "overflows"),
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_constants_that_crash_onnxruntime_are_refused_before_it_runs(tmp_path, name):
    """onnxruntime dies of SIGFPE on these; bnnmip must refuse them first (run in a child process)."""
    nodes, inits, fragment = CRASHERS[name]
    path = _save(tmp_path, _fold_model(nodes, inits, "q"))
    code = f"from bnnmip.cli import main; raise SystemExit(main(['info', {str(path)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "node 'crash' (Div)" in lines[0] and fragment in lines[0], result.stderr


def _run_node(node: onnx.NodeProto, inputs: list[np.ndarray]) -> np.ndarray:
    """The node alone in onnxruntime (the test's own judge, independent of bnnmip's check)."""
    import onnxruntime as ort

    names = [f"in{k}" for k in range(len(inputs))]
    copy = helper.make_node(node.op_type, names, ["out"], **{a.name: helper.get_attribute_value(a)
                                                             for a in node.attribute})
    graph = helper.make_graph([copy], "g", [helper.make_tensor_value_info(
        n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs)],
        [onnx.ValueInfoProto(name="out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, dict(zip(names, inputs)))[0]


_SPECIAL = np.array([np.nan, np.inf, -np.inf, 1e20, -1e20, 300.0, -5.5, 2.5, -0.0, 0.0], np.float32)
FOLD_CASES = [
    ("cast_float_to_uint8", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT8), [_SPECIAL]),
    ("cast_float_to_int8", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT8), [_SPECIAL]),
    ("cast_float_to_int32", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32), [_SPECIAL]),
    ("cast_float_to_bool", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BOOL), [_SPECIAL]),
    ("div_int_mixed_signs", helper.make_node("Div", ["a", "b"], ["y"]),
     [np.array([-7, 7, -7, 7, -1, 0], np.int64), np.array([2, -2, -2, 2, 3, -3], np.int64)]),
    ("div_float_by_zero", helper.make_node("Div", ["a", "b"], ["y"]),
     [np.array([1, -1, 0], np.float32), np.array([0, 0, 0], np.float32)]),
    ("flatten_axis_rank", helper.make_node("Flatten", ["x"], ["y"], axis=2), [np.ones((2, 3), np.float32)]),
    ("flatten_axis_negative", helper.make_node("Flatten", ["x"], ["y"], axis=-1), [np.ones((2, 3, 4), np.float32)]),
    ("where_float_condition", helper.make_node("Where", ["c", "a", "b"], ["y"]),
     [np.array([0.0, 0.5], np.float32), np.ones(2, np.float32), np.zeros(2, np.float32)]),
    ("add_mixed_types", helper.make_node("Add", ["a", "b"], ["y"]),
     [np.ones(2, np.int8), np.ones(2, np.float32)]),
    ("sign_nan", helper.make_node("Sign", ["x"], ["y"]), [_SPECIAL]),
    ("sqrt_negative", helper.make_node("Sqrt", ["x"], ["y"]), [np.array([-1.0, 4.0], np.float32)]),
    ("abs_int_min", helper.make_node("Abs", ["x"], ["y"]), [np.array([_INT_MIN, -3], np.int32)]),
]


@pytest.mark.parametrize("name, node, inputs", FOLD_CASES, ids=[c[0] for c in FOLD_CASES])
def test_every_fold_is_what_onnxruntime_computes_or_is_refused(name, node, inputs):
    """Edge cases where numpy and ONNX are known to part ways: bnnmip's fold equals onnxruntime's, or refuses."""
    node.name = name
    try:
        outputs = folding.fold(node, list(inputs), 17)
        folding.check_folds([(node, list(inputs), outputs)], 17, 8, "model.onnx")
    except UnsupportedModelError as e:
        assert "\n" not in str(e)
        return
    try:
        theirs = _run_node(node, list(inputs))
    except Exception:  # noqa: BLE001 - onnxruntime refuses the node: bnnmip must have refused it too
        pytest.fail(f"{name}: bnnmip folded a node onnxruntime cannot run")
    ours = outputs[0]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs, equal_nan=ours.dtype.kind == "f"), (ours, theirs)


def test_a_custom_domain_op_named_like_an_onnx_op_is_refused(tmp_path):
    model = _model(act="sign")
    node = next(n for n in model.graph.node if n.op_type == "Sign")
    node.domain = "com.evil"
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    assert "com.evil" in _message(lambda: load_onnx(_save(tmp_path, model)))


# ====================================================================== finding 5: nothing off the chain
def _with_side(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[TensorProto],
               output: str, shape) -> onnx.ModelProto:
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, shape))
    return model


def test_a_side_constant_of_shape_is_refused_before_onnxruntime_allocates_it(tmp_path):
    """8 bytes declaring a 2 GiB tensor off the chain (issue 15.5): refused fast, nothing allocated."""
    side = _with_side(_model(), [helper.make_node("ConstantOfShape", ["shape"], ["blob"], name="blob")],
                      [numpy_helper.from_array(np.array([2**14, 2**15], np.int64), "shape")], "blob", [2**14, 2**15])
    path = _save(tmp_path, side)
    tracemalloc.start()
    t0 = time.perf_counter()
    message = _message(lambda: load_onnx(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "node 'blob' (ConstantOfShape)" in message
    assert time.perf_counter() - t0 < 5 and peak < 64 * 2**20


@pytest.mark.parametrize("start", ["input", "constant"])
def test_a_chain_of_side_matmuls_is_refused_before_onnxruntime_runs_it(tmp_path, start):
    """MatMuls beside the layers (on the input, or on 1024 x 1024 constants, 64 deep: minutes in onnxruntime)."""
    nodes, x = [], "input" if start == "input" else "S"
    inits = [numpy_helper.from_array(np.ones((N_IN, N_IN) if start == "input" else (1024, 1024), np.float32), "S")]
    for i in range(64):
        nodes.append(helper.make_node("MatMul", [x, "S"], [f"side{i}"], name=f"side{i}"))
        x = f"side{i}"
    side = _with_side(_model(), nodes, inits, x, ["N", N_IN] if start == "input" else [1024, 1024])
    t0 = time.perf_counter()
    message = _message(lambda: load_onnx(_save(tmp_path, side)))
    assert time.perf_counter() - t0 < 5
    if start == "input":
        assert "feeds several nodes" in message
    else:
        assert "node 'side0' (MatMul)" in message and "not supported" in message


@pytest.mark.parametrize("training", [True, False])
def test_a_dropout_in_training_mode_is_refused(tmp_path, training):
    """An input of a chain node the reader used to ignore: onnxruntime would drop values at random."""
    model = _model()
    node = next(n for n in model.graph.node if n.op_type == "Identity")
    node.op_type = "Dropout"
    node.input.extend(["ratio", "training"])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                                    numpy_helper.from_array(np.array(training), "training")])
    path = _save(tmp_path, model)
    if training:
        assert "training mode" in _message(lambda: load_onnx(path))
    else:
        assert check_onnx(load_onnx(path), np.random.default_rng(6).random((50, N_IN))).ok


def test_a_side_node_without_inputs_is_refused(tmp_path):
    """No input, not a constant (RandomNormal): neither on the chain nor foldable."""
    side = _with_side(_model(), [helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[3])], [],
                      "noise", [3])
    assert "node 'noise' (RandomNormal)" in _message(lambda: load_onnx(_save(tmp_path, side)))


def test_side_nodes_of_constants_are_checked_like_the_chains(tmp_path):
    """Off the chain, a foldable constant is folded under the same rules; anything else is refused."""
    ok = _with_side(_model(), [helper.make_node("Neg", ["bias_29"], ["side"], name="side")], [], "side", [K])
    net = load_onnx(_save(tmp_path, ok, "ok.onnx"))
    assert check_onnx(net, np.random.default_rng(4).random((50, N_IN))).ok
    relu = _with_side(_model(), [helper.make_node("Relu", ["bias_29"], ["side"], name="side")], [], "side", [K])
    assert "node 'side' (Relu)" in _message(lambda: load_onnx(_save(tmp_path, relu, "relu.onnx")))
    crash = _with_side(_model(), [helper.make_node("Div", ["one_int", "zero_int"], ["side"], name="side")],
                       [numpy_helper.from_array(np.array(1, np.int64), "one_int"),
                        numpy_helper.from_array(np.array(0, np.int64), "zero_int")], "side", [])
    crash.graph.output[-1].type.tensor_type.elem_type = TensorProto.INT64
    assert "integer division by zero" in _message(lambda: load_onnx(_save(tmp_path, crash, "crash.onnx")))


# ====================================================================== finding 6: limits of the file
def test_the_folding_cache_has_a_byte_budget(tmp_path, monkeypatch):
    """A small file whose constants broadcast and chain: refused once the folded bytes pass the budget."""
    monkeypatch.setattr(folding, "MAX_FOLDED_BYTES", 8 * 2**20)
    nodes = [helper.make_node("Add", ["row", "col"], ["big0"], name="big0")]
    nodes += [helper.make_node("Add", [f"big{i}", "zero_9"], [f"big{i + 1}"], name=f"big{i + 1}") for i in range(8)]
    inits = [numpy_helper.from_array(np.zeros((1, 1024), np.float32), "row"),
             numpy_helper.from_array(np.zeros((1024, 1), np.float32), "col")]
    side = _with_side(_model(), nodes, inits, "big8", [1024, 1024])
    message = _message(lambda: load_onnx(_save(tmp_path, side)))
    assert "folded constants take over" in message and "(Add)" in message


def _deep(n_layers: int) -> onnx.ModelProto:
    """n_layers MatMuls sharing one ±1 weight: a small file declaring a very deep model."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    nodes, x = [], "input"
    for i in range(n_layers):
        nodes += [helper.make_node("MatMul", [x, "W"], [f"m{i}"]), helper.make_node("Sign", [f"m{i}"], [f"s{i}"])]
        x = f"s{i}"
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_ten_thousand_layer_model_is_refused_quickly(tmp_path):
    path = _save(tmp_path, _deep(10_000))
    t0 = time.perf_counter()
    message = _message(lambda: load_onnx(path))
    assert "10,000 MatMul/Gemm nodes" in message and str(onnx_file.MAX_LAYERS) in message
    assert time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize("rank", [40, 70])
def test_an_input_of_huge_rank_is_refused(tmp_path, rank):
    model = _model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    for d in ["N"] + [1] * (rank - 2) + [N_IN]:
        dims.add().CopyFrom(onnx.TensorShapeProto.Dimension(**({"dim_param": d} if d == "N" else {"dim_value": d})))
    assert f"{rank} dimensions" in _message(lambda: load_onnx(_save(tmp_path, model)))


# ====================================================================== finding 9: errors, not tracebacks
@pytest.mark.parametrize("subgraph", [True, False])
def test_an_unnamed_node_without_outputs_is_a_named_error(tmp_path, subgraph):
    """The subgraph check used to index ``node.output[0]`` (an IndexError traceback)."""
    model = _model()
    attrs = {"then_branch": helper.make_graph([], "t", [], [])} if subgraph else {}
    model.graph.node.append(helper.make_node("If" if subgraph else "Identity", ["zero_9"], [], **attrs))
    message = _message(lambda: load_onnx(_save(tmp_path, model)))
    assert "node '<unnamed>'" in message and ("subgraphs" in message or "no outputs" in message)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"input_range": (-1e308, 1e308)}, "hi - lo overflows"),
    ({"input_range": (0.0, 1e39)}, "float32"),
    ({"levels": 10**20}, "levels=100000000000000000000"),
    ({"levels": 2**24 + 1}, "positive integer up to"),
])
def test_overflowing_ranges_and_grids_are_refused(tmp_path, kwargs, fragment):
    path = _save(tmp_path, _model())
    with pytest.raises(InvalidArgumentError, match=fragment):
        load_onnx(path, **kwargs)
