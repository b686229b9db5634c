"""The ONNX loader: every supported pattern against onnxruntime, a real torch export, refusals
that name the node, and Sign(0) ties."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnnmip
from bnnmip.io.onnx_file import read_model
from bnnmip.io.onnx_reader.graph import Graph
from bnnmip.io.onnx_reader.patterns import PATTERNS as TABLE
from bnnmip.io.onnx_reader.walk import walk
from bnnmip.io.onnx_writer import BnnParams, Pattern, random_params, to_onnx
from tests.helpers import FIXTURES, sample


def _save(tmp_path, params: BnnParams, pattern: Pattern | None = None, name: str = "net.onnx") -> Path:
    path = tmp_path / name
    onnx.save(to_onnx(params, pattern or Pattern()), str(path))
    return path


def _inputs(net, n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random((n - n // 4, net.n_inputs)),  # the input range
                           rng.normal(0.5, 1.0, (n // 4, net.n_inputs))])  # and beyond it


def _check_parity(net, X) -> bnnmip.OnnxCheck:
    check = bnnmip.check_onnx(net, X)
    assert check.ok, str(check)
    assert check.agree == len(X) and len(check.mismatches) == 0, str(check)
    assert check.max_logit_error <= 1e-4
    return check


def _params(seed: int, **kw) -> BnnParams:
    kw.setdefault("negative_gamma", 0.4)
    kw.setdefault("zero_gamma", 0.1)
    return random_params(np.random.default_rng(seed), kw.pop("n", 24), kw.pop("widths", [12, 10]), 4, **kw)


# ---------------------------------------------------------------------- every pattern
LINEAR = ("matmul", "gemm")
BN = ("bn", "mul_add", "sub_div")
ACT = ("sign", "where_ge", "where_less")
WEIGHTS = ("int8", "float", "sign_latent")
PATTERNS = list(itertools.product(LINEAR, BN, ACT, WEIGHTS))
# pytest -q: 9 patterns in which every pair of batch-norm, activation and weight spellings meets once.
PAIRWISE = [(LINEAR[i % 2], BN[i % 3], ACT[i // 3], WEIGHTS[(i % 3 + i // 3) % 3]) for i in range(9)]


@pytest.mark.parametrize("linear,bn,act,weights", sample(PATTERNS, PAIRWISE))
def test_pattern_parity(tmp_path, linear, bn, act, weights):
    seed = PATTERNS.index((linear, bn, act, weights))
    path = _save(tmp_path, _params(seed), Pattern(linear=linear, bn=bn, act=act, weights=weights))
    net = bnnmip.load_onnx(path)
    assert net.widths == [12, 10] and net.n_classes == 4
    assert net.layers[0].binary_weights and net.layers[1].integer
    check = _check_parity(net, _inputs(net, seed=seed))
    assert len(check.ties) == 0
    expected_rule = "Sign(0) = 0 in ONNX, read as +1" if act == "sign" else "sign(0) = +1"
    assert net.tie_rule == expected_rule


@pytest.mark.parametrize("act", ["sign", "where_ge", "where_less"])
@pytest.mark.parametrize("bn", ["bn", "mul_add"])
def test_input_binarization(tmp_path, act, bn):
    path = _save(tmp_path, _params(1, input_binarization=True), Pattern(bn=bn, act=act))
    net = bnnmip.load_onnx(path)
    ib = net.input_binarization
    assert ib is not None and ib.width == 24 and set(np.unique(ib.direction)) <= {-1, 1}
    assert net.layers[0].integer  # the first layer sees ±1 bits
    _check_parity(net, _inputs(net))


@pytest.mark.parametrize("softmax", ["softmax", "logsoftmax"])
def test_trailing_softmax(tmp_path, softmax):
    params = _params(2)
    net = bnnmip.load_onnx(_save(tmp_path, params, Pattern(softmax=softmax)))
    plain = bnnmip.load_onnx(_save(tmp_path, params, name="plain.onnx"))
    X = _inputs(net)
    _check_parity(net, X)
    np.testing.assert_allclose(net.logits(X), plain.logits(X), rtol=1e-12)  # logits, not probabilities


def test_output_batch_norm(tmp_path):
    net = bnnmip.load_onnx(_save(tmp_path, _params(3), Pattern(output_bn=True)))
    _check_parity(net, _inputs(net))


def test_real_valued_first_layer(tmp_path):
    net = bnnmip.load_onnx(_save(tmp_path, _params(4, real_first_layer=True), Pattern(linear="gemm")))
    assert not net.layers[0].binary_weights
    _check_parity(net, _inputs(net))


def test_negative_and_zero_gamma(tmp_path):
    params = _params(5, widths=[16, 14, 12], negative_gamma=0.5, zero_gamma=0.25)
    gammas = [bn[0] for bn in params.batch_norms]
    assert all((g < 0).any() and (g == 0).any() for g in gammas)
    net = bnnmip.load_onnx(_save(tmp_path, params))
    X = _inputs(net)
    _check_parity(net, X)
    acts = net.forward(X)
    for layer, gamma, h in zip(net.layers, gammas, acts.hidden, strict=True):
        assert np.all(layer.scale >= 0)
        np.testing.assert_array_equal(layer.scale == 0, gamma == 0)
        constant = h[:, gamma == 0]
        assert np.all(constant == constant[:1])  # γ = 0: a constant unit


@pytest.mark.parametrize("flatten", ["flatten", "reshape"])
def test_image_input_shape(tmp_path, flatten):
    params = _params(6, n=784, widths=[20, 10], input_shape=(1, 28, 28))
    net = bnnmip.load_onnx(_save(tmp_path, params, Pattern(flatten=flatten)))
    assert net.input_shape == (1, 28, 28) and net.n_inputs == 784
    X = np.random.default_rng(6).random((1000, 1, 28, 28))
    _check_parity(net, X)
    np.testing.assert_array_equal(net.logits(X), net.logits(X.reshape(1000, 784)))


@pytest.mark.parametrize("opset", [11, 13, 15])
def test_older_opsets(tmp_path, opset):
    net = bnnmip.load_onnx(_save(tmp_path, _params(7), Pattern(opset=opset, linear="gemm", act="sign")))
    _check_parity(net, _inputs(net))


# ---------------------------------------------------------------------- a real torch export
def test_torch_export_fixture():
    """``tests/fixtures/torch_sign_gemm.onnx``, written by ``tests/fixtures/make_fixtures.py``."""
    path = FIXTURES / "torch_sign_gemm.onnx"
    assert path.stat().st_size < 16_000
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Sign", "Gemm", "BatchNormalization", "Flatten"} <= ops
    net = bnnmip.load_onnx(path)
    assert net.input_shape == (1, 8, 8) and net.widths == [12, 8] and net.n_classes == 4
    assert net.tie_rule == "Sign(0) = 0 in ONNX, read as +1"
    rng = np.random.default_rng(8)
    _check_parity(net, rng.random((5000, 1, 8, 8)))
    levels = rng.integers(0, 256, (2000, 64)) / 255.0
    _check_parity(net, levels)


# ---------------------------------------------------------------------- refusals name the node
def _graph(nodes, inits, n_in: int = 6, n_out: int = 3, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _pm1(rng, shape):
    return rng.choice([-1.0, 1.0], shape)


def _layer_nodes(tag: str, inp: str, out: str, act: str = "Sign") -> list:
    return [helper.make_node("MatMul", [inp, f"W{tag}"], [f"a{tag}"], name=f"matmul_{tag}"),
            helper.make_node("Add", [f"a{tag}", f"b{tag}"], [f"y{tag}"], name=f"add_{tag}"),
            helper.make_node(act, [f"y{tag}"], [out], name=f"{act.lower()}_{tag}")]


def _refused(tmp_path, model, *needles):
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(bnnmip.UnsupportedModelError) as info:
        bnnmip.load_onnx(path)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert issubclass(bnnmip.UnsupportedModelError, bnnmip.BnnmipError)
    return message


def test_refuses_relu(tmp_path):
    rng = np.random.default_rng(9)
    nodes = _layer_nodes("1", "x", "h1", act="Relu") + [helper.make_node("MatMul", ["h1", "W2"], ["y"], name="out")]
    model = _graph(nodes, {"W1": _pm1(rng, (6, 5)), "b1": rng.normal(size=5), "W2": rng.normal(size=(5, 3))})
    _refused(tmp_path, model, "relu_1", "Relu")


def test_refuses_conv(tmp_path):
    rng = np.random.default_rng(10)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "K"], ["c"], name="the_conv"),
         helper.make_node("Flatten", ["c"], ["f"], name="flat"),
         helper.make_node("MatMul", ["f", "W"], ["y"], name="out")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(_pm1(rng, (2, 1, 3, 3)).astype(np.float32), "K"),
         numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _refused(tmp_path, model, "the_conv", "Conv")


def test_refuses_non_binary_hidden_weights(tmp_path):
    rng = np.random.default_rng(11)
    W2 = _pm1(rng, (5, 4))
    W2[2, 1] = 0.5
    nodes = (_layer_nodes("1", "x", "h1") + _layer_nodes("2", "h1", "h2")
             + [helper.make_node("MatMul", ["h2", "W3"], ["y"], name="out")])
    model = _graph(nodes, {"W1": _pm1(rng, (6, 5)), "b1": rng.normal(size=5), "W2": W2, "b2": rng.normal(size=4),
                           "W3": rng.normal(size=(4, 3))})
    _refused(tmp_path, model, "matmul_2", "±1", "0.5")


def test_refuses_missing_output_layer(tmp_path):
    rng = np.random.default_rng(12)
    nodes = _layer_nodes("1", "x", "h1") + _layer_nodes("2", "h1", "y")
    model = _graph(nodes, {"W1": _pm1(rng, (6, 5)), "b1": rng.normal(size=5), "W2": _pm1(rng, (5, 3)),
                           "b2": rng.normal(size=3)})
    _refused(tmp_path, model, "output layer missing")


def test_refuses_linear_after_linear(tmp_path):
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a1"], name="first"),
             helper.make_node("MatMul", ["a1", "W2"], ["a2"], name="second_linear"),
             helper.make_node("Sign", ["a2"], ["h"], name="sign"),
             helper.make_node("MatMul", ["h", "W3"], ["y"], name="out")]
    model = _graph(nodes, {"W1": _pm1(rng, (6, 5)), "W2": _pm1(rng, (5, 4)), "W3": rng.normal(size=(4, 3))})
    _refused(tmp_path, model, "second_linear", "MatMul", "no sign activation")


def test_refuses_bad_binarizer_values(tmp_path):
    rng = np.random.default_rng(14)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a1"], name="lin"),
             helper.make_node("GreaterOrEqual", ["a1", "zero"], ["c"], name="cmp"),
             helper.make_node("Where", ["c", "one", "zero"], ["h"], name="bad_where"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="out")]
    model = _graph(nodes, {"W1": _pm1(rng, (6, 5)), "W2": rng.normal(size=(5, 3)), "zero": 0.0, "one": 1.0})
    _refused(tmp_path, model, "bad_where", "1 and -1")


# ---------------------------------------------------------------------- Sign(0) ties
def _tie_params(seed: int) -> BnnParams:
    """Layer 2 (fan-in 6, even pre-activations) has BN means on reachable even integers: ties."""
    rng = np.random.default_rng(seed)
    n, w1, w2 = 10, 6, 5
    W1, W2 = _pm1(rng, (w1, n)), _pm1(rng, (w2, w1))
    bn1 = (rng.uniform(0.5, 2, w1), rng.normal(0, 0.3, w1), 0.5 * W1.sum(axis=1) + rng.normal(0, 0.5, w1),
           rng.uniform(0.5, 2, w1))
    # (a - mean) / sqrt(1 + 0) is exactly 0 at a = mean: ONNX Sign gives 0 there.
    bn2 = (np.ones(w2), np.zeros(w2), np.array([0.0, 2.0, -2.0, 0.0, 4.0]), np.ones(w2))
    return BnnParams([W1, W2], [bn1, bn2], rng.normal(size=(3, w2)), rng.normal(size=3), bn_eps=0.0)


def test_sign_ties_are_reported(tmp_path):
    net = bnnmip.load_onnx(_save(tmp_path, _tie_params(15), Pattern(act="sign")))
    assert net.layers[1].sign_ties.all()
    assert "Sign(0) ties" in net.summary()
    X = np.random.default_rng(15).random((4000, 10))
    check = bnnmip.check_onnx(net, X)
    assert len(check.ties) > 100, str(check)
    assert check.ok, str(check)  # every difference is on a reported tie
    assert set(check.mismatches) <= set(check.ties)
    acts = net.forward(X)
    on_tie = np.any(acts.pre[1] == net.layers[1].threshold, axis=1)
    np.testing.assert_array_equal(np.flatnonzero(on_tie), check.ties)
    assert "inputs on a Sign(0) tie" in str(check)


def test_where_binarizer_has_no_ties(tmp_path):
    net = bnnmip.load_onnx(_save(tmp_path, _tie_params(15), Pattern(act="where_ge")))
    assert not net.layers[1].sign_ties.any()
    X = np.random.default_rng(15).random((4000, 10))
    acts = net.forward(X)
    assert np.any(acts.pre[1] == net.layers[1].threshold)  # the same inputs reach the thresholds
    check = _check_parity(net, X)
    assert len(check.ties) == 0


# ---------------------------------------------------------------------- the pattern table
def test_pattern_table_not_mine_falls_through(tmp_path):
    """A handler answering None ("not mine") hands the node to the next; none left: the node is named."""
    path = _save(tmp_path, _params(3), Pattern(act="sign"))
    seen = []

    def not_mine(state, node, tensor):
        seen.append(node.op_type)
        return None

    first_refuses = {op: (not_mine,) + handlers for op, handlers in TABLE.items()}
    chain = walk(Graph(read_model(path), str(path)), first_refuses)
    plain = walk(Graph(read_model(path), str(path)), TABLE)
    assert "Sign" in seen and "MatMul" in seen
    assert [s.output for s in chain.stages] == [s.output for s in plain.stages]
    np.testing.assert_array_equal(chain.out_weight, plain.out_weight)
    without_sign = {op: handlers for op, handlers in TABLE.items() if op != "Sign"}
    with pytest.raises(bnnmip.UnsupportedModelError, match=r"\(Sign\): op Sign cannot be represented"):
        walk(Graph(read_model(path), str(path)), without_sign)
