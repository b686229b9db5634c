"""Writing BNN parameters as ONNX graphs, in each of the patterns the reader accepts.

A :class:`BnnParams` holds what a trainer has (±1 weights, batch-norm statistics, the real
output layer); :func:`to_onnx` writes it in a chosen :class:`Pattern` (MatMul or Gemm, real
BatchNormalization or its Mul/Add or Sub/Div decomposition, Sign or Where binarization, int8 or
float or Sign-of-latent weights, optional input binarization and trailing Softmax).  The test
suite and the soundness benchmarks use it to make networks whose truth they know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InvalidArgumentError

BatchNorm = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # gamma, beta, mean, var


@dataclass
class BnnParams:
    """Raw (unfolded) parameters of a BNN: ``[W -> BN -> sign] * D -> A h + c``."""

    weights: list[np.ndarray]  # (m, n) each; ±1 except possibly the first (real inputs)
    batch_norms: list[BatchNorm]
    out_weight: np.ndarray  # (k, m)
    out_bias: np.ndarray  # (k,)
    input_bn: BatchNorm | None = None  # batch norm + sign on the raw input
    input_shape: tuple[int, ...] = ()
    bn_eps: float = 1e-5

    def __post_init__(self):
        if not self.input_shape:
            self.input_shape = (self.weights[0].shape[1],)


@dataclass(frozen=True)
class Pattern:
    """How to spell each part of the network in ONNX."""

    linear: str = "matmul"  # matmul | gemm
    bn: str = "bn"  # bn | mul_add | sub_div
    act: str = "where_ge"  # sign | where_ge | where_less
    weights: str = "int8"  # int8 | float | sign_latent
    softmax: str = ""  # "" | softmax | logsoftmax
    flatten: str = "flatten"  # flatten | reshape (used when the input shape is not flat)
    opset: int = 17
    output_bn: bool = False  # a BatchNormalization after the output layer
    extra: dict = field(default_factory=dict, compare=False)


def random_params(
    rng: np.random.Generator,
    n_inputs: int,
    widths: list[int],
    n_classes: int,
    *,
    input_binarization: bool = False,
    real_first_layer: bool = False,
    zero_gamma: float = 0.0,
    negative_gamma: float = 0.3,
    input_shape: tuple[int, ...] = (),
) -> BnnParams:
    """Random BNN parameters with batch-norm thresholds spread over each layer's range."""
    weights, bns = [], []
    fan_in = n_inputs
    for i, m in enumerate(widths):
        real_inputs = i == 0 and not input_binarization
        if i == 0 and real_first_layer:
            W = rng.normal(size=(m, fan_in))
        else:
            W = rng.choice([-1.0, 1.0], size=(m, fan_in))
        # Centre thresholds where pre-activations typically fall: inputs uniform in [0, 1] or ±1.
        center = 0.5 * W.sum(axis=1) if real_inputs else 0.0
        spread = 0.3 * np.sqrt(fan_in) if real_inputs else 0.7 * np.sqrt(fan_in)
        gamma = rng.uniform(0.5, 2.0, m) * np.where(rng.random(m) < negative_gamma, -1, 1)
        gamma[rng.random(m) < zero_gamma] = 0.0
        mean = center + rng.normal(0.0, spread, m)
        var = rng.uniform(0.5, 2.0, m) * spread**2
        beta = rng.normal(0.0, 0.5, m)
        weights.append(W)
        bns.append((gamma, beta, mean, var))
        fan_in = m
    input_bn = None
    if input_binarization:
        g = rng.uniform(0.5, 2.0, n_inputs) * np.where(rng.random(n_inputs) < negative_gamma, -1, 1)
        input_bn = (g, rng.normal(0, 0.2, n_inputs), rng.uniform(0.2, 0.8, n_inputs), rng.uniform(0.01, 0.1, n_inputs))
    return BnnParams(
        weights, bns, rng.normal(size=(n_classes, fan_in)), rng.normal(size=n_classes), input_bn,
        input_shape or (n_inputs,),
    )


class _Builder:
    def __init__(self, pattern: Pattern):
        self.p = pattern
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value, stem: str, dtype=np.float32) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(self, W: np.ndarray, binary: bool) -> str:
        """The (n, m) matrix for MatMul, or (m, n) for Gemm with transB=1."""
        M = W.T if self.p.linear == "matmul" else W
        if not binary or self.p.weights == "float":
            return self.const(M, "W")
        if self.p.weights == "int8":
            return self.node("Cast", [self.const(M, "W", np.int8)], to=TensorProto.FLOAT)
        latent = M * np.random.default_rng(0).uniform(0.1, 1.0, M.shape)  # sign(latent) = M
        return self.node("Sign", [self.const(latent, "latent")])

    def linear(self, x: str, W: np.ndarray, binary: bool, bias=None) -> str:
        w = self.weight(W, binary)
        if self.p.linear == "gemm":
            inputs = [x, w] + ([self.const(bias, "C")] if bias is not None else [])
            return self.node("Gemm", inputs, transB=1, alpha=1.0, beta=1.0)
        y = self.node("MatMul", [x, w])
        return self.node("Add", [y, self.const(bias, "bias")]) if bias is not None else y

    def batch_norm(self, x: str, bn: BatchNorm, eps: float, shape: tuple[int, ...]) -> str:
        gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn)
        if self.p.bn == "bn":
            return self.node("BatchNormalization", [x] + [self.const(v, s) for v, s in
                             zip((gamma, beta, mean, var), ("gamma", "beta", "mean", "var"))], epsilon=eps)
        bshape = (1,) + shape
        std = np.sqrt(var + eps).reshape(bshape)
        if self.p.bn == "mul_add":
            scale = gamma.reshape(bshape) / std
            shift = beta.reshape(bshape) - mean.reshape(bshape) * scale
            return self.node("Add", [self.node("Mul", [x, self.const(scale, "scale")]), self.const(shift, "shift")])
        y = self.node("Div", [self.node("Sub", [x, self.const(mean.reshape(bshape), "mean")]), self.const(std, "std")])
        return self.node("Add", [self.node("Mul", [y, self.const(gamma.reshape(bshape), "gamma")]),
                                 self.const(beta.reshape(bshape), "beta")])

    def sign(self, x: str) -> str:
        if self.p.act == "sign":
            return self.node("Sign", [x])
        zero, one, minus = self.const(0.0, "zero"), self.const(1.0, "one"), self.const(-1.0, "minus")
        if self.p.act == "where_ge":
            return self.node("Where", [self.node("GreaterOrEqual", [x, zero]), one, minus])
        return self.node("Where", [self.node("Less", [x, zero]), minus, one])


def to_onnx(params: BnnParams, pattern: Pattern = Pattern()) -> onnx.ModelProto:
    """The network ``params`` as an ONNX model spelled in ``pattern`` (input 'input', output 'output')."""
    for key in ("linear", "bn", "act", "weights", "softmax", "flatten"):
        allowed = {"linear": ("matmul", "gemm"), "bn": ("bn", "mul_add", "sub_div"),
                   "act": ("sign", "where_ge", "where_less"), "weights": ("int8", "float", "sign_latent"),
                   "softmax": ("", "softmax", "logsoftmax"), "flatten": ("flatten", "reshape")}[key]
        if getattr(pattern, key) not in allowed:
            raise InvalidArgumentError(f"pattern.{key}={getattr(pattern, key)!r}: expected one of {allowed}")
    b = _Builder(pattern)
    x = "input" if len(params.input_shape) == 1 else _flatten(b, "input", pattern)
    n_inputs = int(np.prod(params.input_shape))
    if params.input_bn is not None:
        x = b.sign(b.batch_norm(x, params.input_bn, params.bn_eps, (n_inputs,)))
    for i, (W, bn) in enumerate(zip(params.weights, params.batch_norms)):
        binary = i > 0 or params.input_bn is not None or bool(np.all(np.abs(W) == 1))
        x = b.linear(x, W, binary)
        x = b.sign(b.batch_norm(x, bn, params.bn_eps, (W.shape[0],)))
    x = b.linear(x, params.out_weight, False, params.out_bias)
    if pattern.output_bn:
        k = len(params.out_bias)
        x = b.batch_norm(x, (np.full(k, 2.0), np.full(k, 0.1), np.zeros(k), np.ones(k)), params.bn_eps, (k,))
    if pattern.softmax:
        x = b.node("Softmax" if pattern.softmax == "softmax" else "LogSoftmax", [x], axis=1)
    b.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    graph = helper.make_graph(
        b.nodes, "bnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *params.input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(params.out_bias)])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", pattern.opset)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def _flatten(b: _Builder, x: str, pattern: Pattern) -> str:
    if pattern.flatten == "flatten":
        return b.node("Flatten", [x], axis=1)
    return b.node("Reshape", [x, b.const(np.array([0, -1]), "shape", np.int64)])


def save_onnx(params: BnnParams, path, pattern: Pattern = Pattern()) -> None:
    """Write ``to_onnx(params, pattern)`` to ``path``."""
    onnx.save(to_onnx(params, pattern), str(path))
