r"""Handlers for affine maps and linear layers: the algebra of :math:`y = \alpha \odot (W\,\mathrm{in}) + \beta`.

* ``MatMul`` / ``Gemm`` with a constant weight start a layer (the raw input's affine map, e.g. a
  normalisation, folds into the first layer);
* ``Add`` / ``Sub`` / ``Mul`` / ``Div`` by constants, ``Neg`` and ``BatchNormalization`` update
  :math:`\alpha, \beta` per unit (batch norm folded, in float64).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...errors import UnsupportedModelError
from .graph import attrs
from .ops import Op
from .walk import GemmScale, Kind, Stage, WalkState


def _refuse_bits(state: WalkState, node: onnx.NodeProto) -> None:
    if state.kind is Kind.BITS:
        raise UnsupportedModelError(
            f"{state.where(node)}: arithmetic on binarized values (they must feed a linear layer)"
        )


def _operand(state: WalkState, node: onnx.NodeProto, tensor: str) -> tuple[int, np.ndarray]:
    """(position of the chain's tensor among the inputs, the other operand per unit)."""
    _refuse_bits(state, node)
    main = list(node.input).index(tensor)
    other = state.graph.need_const(node, 1 - main, "the other operand")
    return main, state.broadcast(node, other, "the constant operand")


def add(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""``y + c``: :math:`\beta \gets \beta + c`."""
    _, c = _operand(state, node, tensor)
    state.beta = state.beta + c
    return state.consume(node)


def sub(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""``y - c`` (:math:`\beta \gets \beta - c`) or ``c - y`` (:math:`\alpha, \beta \gets -\alpha, c - \beta`)."""
    main, c = _operand(state, node, tensor)
    if main == 0:
        state.beta = state.beta - c
    else:
        state.alpha, state.beta = -state.alpha, c - state.beta
    return state.consume(node)


def mul(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""``c y``: :math:`\alpha, \beta \gets c\alpha, c\beta`."""
    _, c = _operand(state, node, tensor)
    state.alpha, state.beta = state.alpha * c, state.beta * c
    return state.consume(node)


def div(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""``y / c``: :math:`\alpha, \beta \gets \alpha / c, \beta / c` (``c / y`` is not affine)."""
    main, c = _operand(state, node, tensor)
    if main != 0:
        raise UnsupportedModelError(f"{state.where(node)}: dividing a constant by the layer is not affine")
    if np.any(c == 0):
        raise UnsupportedModelError(f"{state.where(node)}: division by a constant that contains 0")
    state.alpha, state.beta = state.alpha / c, state.beta / c
    return state.consume(node)


def neg(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""``-y``: :math:`\alpha, \beta \gets -\alpha, -\beta`."""
    _refuse_bits(state, node)
    state.alpha, state.beta = -state.alpha, -state.beta
    return state.consume(node)


def batch_norm(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    r"""Inference batch norm :math:`\gamma (y - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, per channel."""
    _refuse_bits(state, node)
    at = attrs(node)
    if at.get("training_mode", 0):
        raise UnsupportedModelError(f"{state.where(node)}: training_mode=1 batch norm is not an inference model")
    if any(o and o in state.graph.consumers for o in node.output[1:]):
        raise UnsupportedModelError(f"{state.where(node)}: running statistics outputs are used")
    params = [np.asarray(state.graph.need_const(node, i, what), np.float64).reshape(-1)
              for i, what in ((1, "scale (gamma)"), (2, "bias (beta)"), (3, "mean"), (4, "variance"))]
    gamma, bias, mean, var = params
    if np.any(var < 0):
        raise UnsupportedModelError(f"{state.where(node)}: negative variance {var[var < 0][0]:g}")
    eps = float(at.get("epsilon", 1e-5))
    if not np.all(var + eps > 0):
        raise UnsupportedModelError(f"{state.where(node)}: variance + epsilon is not positive")
    channels = state.shape[0]
    shape = (channels,) + (1,) * (len(state.shape) - 1)
    if any(p.size != channels for p in params):
        raise UnsupportedModelError(
            f"{state.where(node)}: parameters of size {[p.size for p in params]} for {channels} channels"
        )
    k = (gamma / np.sqrt(var + eps)).reshape(shape)
    state.alpha = state.alpha * k
    state.beta = (state.beta - mean.reshape(shape)) * k + bias.reshape(shape)
    return state.consume(node)


def linear(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    """``MatMul`` / ``Gemm`` by a constant weight: a new layer starts (the raw input's map folds in)."""
    W = _linear_weight(state, node, tensor)  # (m, n)
    if state.kind is Kind.BITS and state.bits_scale != 1.0:
        W = W * state.bits_scale  # the graph's bits are ±s: the layer reads rows ±c·s (exact in float64)
    state.bits_scale = 1.0
    m = W.shape[0]
    alpha, beta, gemm = np.ones(m), np.zeros(m), None
    if node.op_type == Op.GEMM:
        alpha, beta, gemm = _gemm_scale(state, node, m)
    integer = state.kind is Kind.BITS
    if state.kind is Kind.RAW:
        # Fold the raw input's affine map (e.g. normalisation) into the first layer.
        if not np.any(state.alpha):
            raise UnsupportedModelError(f"{state.where(node)}: the input is multiplied by zero")
        beta = beta + alpha * (W @ state.beta)
        if np.all(state.alpha == state.alpha.flat[0]):
            alpha = alpha * state.alpha.flat[0]
        else:
            W = W * state.alpha[None, :]
    state.stage = Stage(W, alpha, beta, integer, node, calib_input=node.output[0], gemm=gemm)
    state.kind, state.shape = Kind.PRE, (m,)
    state.alpha, state.beta = state.stage.alpha, state.stage.beta
    return node.output[0]


def _linear_weight(state: WalkState, node: onnx.NodeProto, tensor: str) -> np.ndarray:
    """The layer's weight as an (outputs, inputs) float64 matrix, after the checks on the layer."""
    if state.kind is Kind.PRE:
        raise UnsupportedModelError(f"{state.where(node)}: two linear layers with no sign activation between them")
    if len(state.shape) != 1:
        raise UnsupportedModelError(
            f"{state.where(node)}: linear layer on a tensor of shape {state.shape}; flatten it first"
        )
    if node.input[0] != tensor:
        raise UnsupportedModelError(f"{state.where(node)}: the layer input must be the first operand")
    at = attrs(node)
    weight = np.asarray(state.graph.need_const(node, 1, "the weight"), np.float64)
    if node.op_type == Op.GEMM:
        if at.get("transA", 0):
            raise UnsupportedModelError(f"{state.where(node)}: transA=1 on the layer input")
        weight = weight.T if at.get("transB", 0) else weight
    if weight.ndim != 2 or weight.shape[0] != state.shape[0]:
        raise UnsupportedModelError(
            f"{state.where(node)}: weight of shape {weight.shape} does not fit {state.shape[0]} inputs"
        )
    return weight.T.copy()


def _gemm_scale(state: WalkState, node: onnx.NodeProto, m: int) -> tuple[np.ndarray, np.ndarray, GemmScale]:
    """Gemm's ``alpha * P + beta * C`` as per-unit (scale, shift), and as written for calibration."""
    at = attrs(node)
    a, b = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    C = state.graph.need_const(node, 2, "the bias C") if len(node.input) > 2 and node.input[2] else None
    alpha, beta = np.full(m, a), np.zeros(m)
    if C is not None:
        C64 = np.asarray(C, np.float64)
        if C64.size not in (1, m):
            raise UnsupportedModelError(f"{state.where(node)}: bias C of shape {C64.shape} for {m} units")
        beta = beta + b * (C64.reshape(()) if C64.size == 1 else C64.reshape(m))
    return alpha, beta, GemmScale(a, b, C)
