r"""ONNX graph → :class:`~bnnmip.network.BNN`: a pattern consumer along the layer chain.

The reader walks from the graph input along the one chain of non-constant nodes and keeps the
current tensor as a per-unit affine function of the last linear layer's output,
:math:`y = \alpha \odot (W\,\mathrm{in}) + \beta`:

* ``MatMul`` / ``Gemm`` with a constant weight start a layer;
* ``Add`` / ``Sub`` / ``Mul`` / ``Div`` by constants, ``Neg`` and ``BatchNormalization`` update
  :math:`\alpha, \beta` (batch norm folded, in float64);
* ``Sign`` or ``Where(cmp(y, c), p, q)`` (cmp one of ``>=, >, <, <=``, ``{p, q} = {1, -1}``) end it:
  the layer becomes a threshold layer;
* on the raw input the same ops followed by a binarizer form the input binarization;
* ``Flatten`` / ``Reshape`` / ``Cast`` / ``Identity`` / ``Dropout`` pass through;
* the chain ends at a graph output; a trailing ``Softmax`` / ``LogSoftmax`` is skipped (logits are
  the tensor before it).

Constant subgraphs (``Sign`` of a weight initializer, ``Cast`` of int8 weights, ``Transpose``,
``Constant`` nodes, ...) are folded with numpy first.  Thresholds of layers with ±1 inputs are then
*calibrated* on onnxruntime: the layer's own nodes (from the linear product to the binarizer) run
on every integer pre-activation the layer can see, so the integer thresholds reproduce
onnxruntime's float32 arithmetic exactly, including where ``Sign`` returns 0.  Finally the whole
graph runs in onnxruntime on probe inputs (:func:`_self_check`): a model whose float32 arithmetic
does not compute what its constants say (overflow, cancellation) is refused, so a model that
loads is one the onnxruntime judge agrees with.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import helper

from ..errors import ExactnessError, InvalidArgumentError, UnsupportedModelError
from ..network import BNN, InputBinarization, Layer
from .onnx_file import MAX_TENSOR_ELEMENTS, read_model, tensor_to_array
from .runtime import ort_session, tie_inputs

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
_PASS_THROUGH = {"Identity", "Dropout", "Cast", "Flatten", "Reshape"}
_AFFINE = {"Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization"}
_LINEAR = {"MatMul", "Gemm"}
_COMPARE = {"GreaterOrEqual", "Greater", "Less", "LessOrEqual"}
_SOFTMAX = {"Softmax", "LogSoftmax"}
_MIRRORED = {"GreaterOrEqual": "LessOrEqual", "Greater": "Less", "Less": "Greater", "LessOrEqual": "GreaterOrEqual"}


@dataclass(frozen=True)
class OnnxOrigin:
    """Where a BNN came from, enough to rerun the original graph in onnxruntime."""

    path: str
    model_bytes: bytes  # the validated model (external data inlined)
    input_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    logits_name: str
    dtype: type

    @cached_property
    def logits_model(self) -> bytes:
        """The model with its logits tensor (before any Softmax) as an output."""
        model = onnx.load_model_from_string(self.model_bytes)
        if self.logits_name not in [o.name for o in model.graph.output]:
            dtype = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
            model.graph.output.append(helper.make_tensor_value_info(self.logits_name, dtype, None))
        return model.SerializeToString()


def load_onnx(path: str | os.PathLike, *, input_range=(0.0, 1.0), levels: int | None = None) -> BNN:
    """Load a binarized network from an ONNX file into bnnmip's exact threshold form.

    Parameters
    ----------
    path
        The ONNX file.  External data must sit inside the model's folder.
    input_range
        ``(lo, hi)``: the range of every input value (default [0, 1]).
    levels
        If given, inputs live on the grid ``lo + k (hi - lo) / levels`` (255 for 8-bit images);
        attacks then perturb on that grid.

    Raises
    ------
    ModelFileError
        The file is missing, not ONNX, unsafe or invalid.
    UnsupportedModelError
        The graph has a node bnnmip cannot represent exactly (the message names it).
    """
    lo, hi = _checked_range(input_range)
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1):
        raise InvalidArgumentError(f"levels={levels!r}: expected a positive integer or None")
    model = read_model(path)
    graph = _Graph(model, str(path))
    chain = _Walker(graph).walk()
    layers, binarization = _build_stages(chain, graph)
    origin = OnnxOrigin(
        str(path), _any_batch(model).SerializeToString(), graph.input_name, graph.input_shape, chain.logits_name,
        graph.dtype,
    )
    net = BNN(
        layers=tuple(layers),
        out_weight=chain.out_weight,
        out_bias=chain.out_bias,
        input_binarization=binarization,
        input_range=(lo, hi),
        levels=None if levels is None else int(levels),
        input_shape=graph.input_shape,
        tie_rule=chain.tie_rule(),
        source=str(path),
        origin=origin,
    )
    _self_check(net, chain, graph)
    return net


def _any_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a symbolic batch dimension on its input and outputs (and no stale value_info).

    The reader only accepts graphs that keep the batch dimension apart (Flatten(axis=1), Reshape
    with 0 or -1 first), so a graph exported with batch size 1 computes the same per row for any
    batch, and onnxruntime can judge many inputs in one run.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


_U32 = 2.0**-24  # unit roundoff of float32
_PROBE_ROWS = 64  # random probe inputs, besides the corners and the threshold crossings
_PROBE_UNITS = 128  # units of a real-valued first stage whose thresholds are probed from both sides
_PROBE_VALUES = 2**24  # at most this many probe values in all (rows x inputs)


def _self_check(net: BNN, chain: _Chain, graph: _Graph) -> None:
    """Run the original graph in onnxruntime on probe inputs and compare it with bnnmip's reading.

    Integer layers are calibrated on onnxruntime already; a real-valued first stage (a real first
    layer, or the input binarization) and the output layer are read in float64 arithmetic.  Extreme
    constants (a batch-norm scale of 3e38, a mean of 1e30) make onnxruntime's float32 overflow or
    cancel, so the graph no longer computes what its constants say.  This check refuses such a
    model: the first stage's signs must agree unit by unit (except within float32 rounding of a
    threshold, probed from both sides), and the logits must agree where the first stage does.
    """
    first = net.threshold_stages[0]
    real_first = not getattr(first, "integer", False)  # InputBinarization, or a real-valued layer 1
    names = [chain.logits_name] + ([chain.stages[0].output] if real_first else [])
    model = onnx.load_model_from_string(net.origin.logits_model)
    declared = {o.name for o in model.graph.output}
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(graph.dtype))
    model.graph.output.extend(helper.make_tensor_value_info(n, dtype, None) for n in names if n not in declared)
    X = _probe_inputs(net)
    try:
        session = ort_session(model.SerializeToString())
        results = session.run(names, {graph.input_name: X.astype(graph.dtype).reshape((-1,) + graph.input_shape)})
        theirs = np.asarray(results[0], np.float64).reshape(len(X), -1)
        bits = np.asarray(results[1], np.float64).reshape(len(X), -1) if real_first else None
    except Exception as e:  # onnxruntime raises its own exception types
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(f"{graph.path}: onnxruntime cannot run this model ({first_line})") from e
    if theirs.shape[1] != net.n_classes:
        raise UnsupportedModelError(
            f"{graph.path}: onnxruntime gives {theirs.shape[1]} values for the logits {chain.logits_name!r}, "
            f"bnnmip reads {net.n_classes} classes"
        )
    rows = np.ones(len(X), bool)
    if real_first:
        rows = _check_first_stage(net, X, bits, graph.where(chain.stages[0].node))
    rows[tie_inputs(net, X)] = False  # ONNX Sign(0) = 0 where bnnmip reads +1: not a disagreement
    ours = net.logits(X[rows])
    theirs = theirs[rows]
    if not np.isfinite(theirs).all():
        raise ExactnessError(f"{graph.path}: onnxruntime computes non-finite logits (float32 overflow)")
    error = np.abs(ours - theirs).max(axis=1, initial=0.0) / np.maximum(1.0, np.abs(theirs).max(axis=1, initial=0.0))
    if error.max(initial=0.0) > 1e-4:
        raise ExactnessError(
            f"{graph.path}: the logits differ from onnxruntime's by {error.max():.3g} (relative) on probe inputs: "
            "float32 overflow or cancellation in the output layer's constants"
        )


def _first_stage_tolerance(net: BNN) -> np.ndarray:
    """Per unit of the first stage: how far from its threshold float32 rounding may decide differently."""
    first = net.threshold_stages[0]
    theta = np.where(np.isfinite(first.threshold), np.abs(first.threshold), 0.0)
    reach = max(abs(net.input_range[0]), abs(net.input_range[1]))
    if isinstance(first, InputBinarization):
        return 64 * _U32 * (1.0 + theta + reach)
    weight = np.abs(first.weight.astype(np.float64))
    return 8 * (first.fan_in + 2) * _U32 * (weight.sum(axis=1) * reach + theta + 1.0)


def _probe_inputs(net: BNN) -> np.ndarray:
    """Corners, random points, and points just either side of first-stage thresholds."""
    rng = np.random.default_rng(0)
    lo, hi = net.input_range
    n = net.n_inputs
    rows = max(8, min(_PROBE_ROWS, _PROBE_VALUES // n))
    X = [np.full((1, n), lo), np.full((1, n), hi), np.full((1, n), (lo + hi) / 2), rng.uniform(lo, hi, (rows, n))]
    first = net.threshold_stages[0]
    if not getattr(first, "integer", False):
        finite = np.flatnonzero(np.isfinite(first.threshold))
        tol = _first_stage_tolerance(net)
        if isinstance(first, InputBinarization):  # thresholds of the pixels themselves, from both sides
            raw = np.zeros(n)
            raw[finite] = (first.threshold * first.direction)[finite]
            for side in (-1.0, 1.0):
                X.append(np.clip(raw + side * first.direction * 4 * tol, lo, hi)[None, :])
        else:
            units = finite[: max(1, min(_PROBE_UNITS, _PROBE_VALUES // (2 * n)))] if len(finite) else finite
            W = first.weight.astype(np.float64)
            for side in (-1.0, 1.0):
                start = rng.uniform(lo, hi, (len(units), n))
                w = W[units]
                goal = first.threshold[units] + side * 4 * tol[units]
                step = (goal - np.einsum("ij,ij->i", start, w)) / np.maximum((w * w).sum(axis=1), 1e-300)
                X.append(np.clip(start + step[:, None] * w, lo, hi))
    return np.concatenate(X)


def _check_first_stage(net: BNN, X: np.ndarray, bits: np.ndarray, where: str) -> np.ndarray:
    """Refuse a first stage that onnxruntime does not compute as thresholds; rows where all units agree."""
    first = net.threshold_stages[0]
    acts = net.forward(X)
    pre, ours = acts.pre[0], acts.post[0]
    if bits.shape != ours.shape:
        raise UnsupportedModelError(f"{where}: onnxruntime gives shape {bits.shape} for the layer, not {ours.shape}")
    clear = np.abs(pre - first.threshold) > _first_stage_tolerance(net)
    bad = (bits != ours) & clear
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise ExactnessError(
            f"{where}: unit {j}: onnxruntime computes {bits[i, j]:+g} at pre-activation {pre[i, j]:.6g}, but the "
            f"threshold {first.threshold[j]:.6g} bnnmip reads from the constants says {int(ours[i, j]):+d}: "
            "float32 overflow or cancellation in the layer's constants"
        )
    return (bits == ours).all(axis=1)


def _checked_range(input_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"input_range={input_range!r}: expected two numbers (lo, hi)") from e
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InvalidArgumentError(f"input_range={input_range!r}: expected finite lo < hi")
    return lo, hi


# ---------------------------------------------------------------------- graph index and constants
class _Graph:
    """Producers, consumers and folded constants of a validated graph."""

    def __init__(self, model: onnx.ModelProto, path: str):
        self.model, self.path = model, path
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
        if t.elem_type not in _FLOAT_TYPES:
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
        return _FLOAT_TYPES[t.elem_type], tuple(dims[1:])

    def where(self, node: onnx.NodeProto) -> str:
        return f"{self.path}: node {node.name or node.output[0]!r} ({node.op_type})"

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
            outputs = _fold(node, inputs, self.opset)
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
        value = self.const(node.input[index]) if index < len(node.input) and node.input[index] else None
        if value is None:
            raise UnsupportedModelError(f"{self.where(node)}: {what} must be a constant")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise UnsupportedModelError(f"{self.where(node)}: {what} {node.input[index]!r} contains NaN or inf")
        return value


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold(node: onnx.NodeProto, x: list, opset: int) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with numpy (the ops weight preprocessing uses)."""
    op, at = node.op_type, _attrs(node)
    if op == "Constant":
        if "value" in at:
            return [onnx.numpy_helper.to_array(at["value"])]
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in at:
                return [np.asarray(at[key], dtype)]
        raise UnsupportedModelError(f"unsupported Constant value kind {list(at)}")
    unary = {
        "Identity": lambda v: v, "Sign": np.sign, "Neg": np.negative, "Abs": np.abs,
        "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Not": np.logical_not,
    }
    binary = {
        "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "GreaterOrEqual": np.greater_equal,
        "Greater": np.greater, "Less": np.less, "LessOrEqual": np.less_equal, "Equal": np.equal,
    }
    if op in binary or op in ("Div", "Where"):
        _check_broadcast(x[:3 if op == "Where" else 2])
    if op in unary:
        return [unary[op](x[0])]
    if op in binary:
        return [binary[op](x[0], x[1])]
    if op == "Div":
        return [x[0] // x[1] if x[0].dtype.kind in "iu" else np.divide(x[0], x[1])]
    if op == "Cast":
        return [x[0].astype(helper.tensor_dtype_to_np_dtype(at["to"]))]
    if op == "Where":
        return [np.where(x[0], x[1], x[2])]
    if op == "Transpose":
        return [np.transpose(x[0], at.get("perm"))]
    if op == "Reshape":
        return [x[0].reshape(_reshape_target(x[0].shape, x[1], at.get("allowzero", 0)))]
    if op == "Flatten":
        axis = at.get("axis", 1) % max(x[0].ndim, 1)
        return [x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)]
    if op in ("Unsqueeze", "Squeeze"):
        axes = at.get("axes") if opset < 13 else (x[1].tolist() if len(x) > 1 and x[1] is not None else None)
        if op == "Squeeze":
            return [np.squeeze(x[0], axis=None if axes is None else tuple(axes))]
        out = x[0]
        for a in sorted(a % (out.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    raise UnsupportedModelError(f"op {op} on constant inputs is not supported")


def _check_broadcast(operands: list) -> None:
    """Refuse a broadcast whose result would be huge, before numpy allocates it."""
    shape = np.broadcast_shapes(*(np.shape(v) for v in operands))
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise UnsupportedModelError(f"broadcasting constants to shape {shape} is over bnnmip's size limit")


def _reshape_target(shape: tuple, spec, allowzero: int) -> tuple:
    spec = [int(s) for s in np.asarray(spec).reshape(-1)]
    return tuple(shape[i] if s == 0 and not allowzero else s for i, s in enumerate(spec))


# ---------------------------------------------------------------------- the layer chain
@dataclass
class _Stage:
    """One threshold stage found on the chain (a hidden layer or the input binarization)."""

    weight: np.ndarray | None  # (m, n) float64, None for the input binarization
    alpha: np.ndarray
    beta: np.ndarray
    integer: bool
    node: onnx.NodeProto  # the linear node (or the first node of the binarization)
    calib_input: str = ""  # tensor fed with integer pre-activations for calibration
    calib_nodes: list = field(default_factory=list)
    calib_prefix: list = field(default_factory=list)  # synthetic nodes for Gemm's alpha/beta*C
    output: str = ""
    tie: str = "+1"  # what the binarizer gives at y == 0: '+1', '-1' or '0' (ONNX Sign)


@dataclass
class _Chain:
    stages: list[_Stage] = field(default_factory=list)
    out_weight: np.ndarray | None = None
    out_bias: np.ndarray | None = None
    logits_name: str = ""

    def tie_rule(self) -> str:
        ties = {s.tie for s in self.stages}
        if ties == {"0"}:
            return "Sign(0) = 0 in ONNX, read as +1"
        if ties == {"-1"}:
            return "sign(0) = -1"
        if ties <= {"+1"}:
            return "sign(0) = +1"
        return "mixed per layer: " + ", ".join(sorted(ties))


class _Walker:
    """Consumes the chain of nodes from the graph input to its output."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self.chain = _Chain()
        self.shape: tuple[int, ...] = graph.input_shape  # feature shape of the current tensor
        self.kind = "raw"  # raw input | pre (affine of a linear output) | bits | done
        self.alpha = np.ones(self.shape)
        self.beta = np.zeros(self.shape)
        self.stage: _Stage | None = None

    def walk(self) -> _Chain:
        tensor = self.g.input_name
        while True:
            users = self.g.consumers.get(tensor, [])
            if not users:
                break
            if len(users) > 1:
                names = [n.name or n.op_type for n in users]
                raise UnsupportedModelError(
                    f"{self.g.path}: tensor {tensor!r} feeds several nodes {names}; bnnmip reads a chain of layers"
                )
            tensor = self.step(users[0], tensor)
        return self.finish(tensor)

    def finish(self, tensor: str) -> _Chain:
        if tensor not in self.g.outputs:
            raise UnsupportedModelError(
                f"{self.g.path}: the layer chain ends at {tensor!r}, which is not a graph output"
            )
        if self.kind == "bits":
            raise UnsupportedModelError(
                f"{self.g.path}: output layer missing: the graph ends with binarized values ({tensor!r})"
            )
        if self.kind == "pre":
            self.close_output(tensor)
        if self.kind != "done":
            raise UnsupportedModelError(f"{self.g.path}: no linear layer and sign activation on the chain")
        return self.chain

    def close_output(self, tensor: str) -> None:
        if not any(stage.weight is not None for stage in self.chain.stages):
            raise UnsupportedModelError(
                f"{self.g.path}: no hidden sign layer before the output layer: not a binarized network"
            )
        self.chain.out_weight = self.alpha[:, None] * self.stage.weight
        self.chain.out_bias = np.array(self.beta, np.float64)
        self.chain.logits_name = tensor
        self.kind = "done"

    # -- dispatch
    def step(self, node: onnx.NodeProto, tensor: str) -> str:
        op = node.op_type
        if self.kind == "done" and op not in ("Identity", "Cast"):
            raise UnsupportedModelError(f"{self.g.where(node)}: nothing may follow the output layer's Softmax")
        if op in _SOFTMAX:
            if self.kind != "pre":
                raise UnsupportedModelError(f"{self.g.where(node)}: Softmax only after the output layer")
            self.close_output(tensor)
            return node.output[0]
        if op in _PASS_THROUGH:
            return self.pass_through(node, tensor)
        if op in _LINEAR:
            return self.linear(node, tensor)
        if op in _AFFINE:
            return self.affine(node, tensor)
        if op == "Sign" or op in _COMPARE:
            return self.binarize(node, tensor)
        raise UnsupportedModelError(f"{self.g.where(node)}: op {op} cannot be represented in a BNN")

    def _track(self, node: onnx.NodeProto) -> None:
        if self.stage is not None and self.kind in ("pre", "raw"):
            self.stage.calib_nodes.append(node)

    def pass_through(self, node: onnx.NodeProto, tensor: str) -> str:
        op, at = node.op_type, _attrs(node)
        if op == "Cast" and at.get("to") not in _FLOAT_TYPES:
            raise UnsupportedModelError(f"{self.g.where(node)}: casting the layer chain to a non-float type")
        if op == "Dropout" and len(node.output) > 1 and node.output[1] in self.g.consumers:
            raise UnsupportedModelError(f"{self.g.where(node)}: the dropout mask is used")
        if op in ("Flatten", "Reshape"):
            self.reshape(node, at)
        self._track(node)
        return node.output[0]

    def reshape(self, node: onnx.NodeProto, at: dict) -> None:
        n = int(np.prod(self.shape))
        if node.op_type == "Flatten":
            if at.get("axis", 1) != 1:
                raise UnsupportedModelError(f"{self.g.where(node)}: only Flatten(axis=1) keeps the batch dimension")
            new = (n,)
        else:
            spec = [int(s) for s in self.g.need_const(node, 1, "the target shape").reshape(-1)]
            if len(spec) < 1 or spec[0] not in (0, -1) or (spec[0] == -1 and -1 in spec[1:]):
                raise UnsupportedModelError(
                    f"{self.g.where(node)}: target shape {spec} must keep the batch dimension (0 or -1 first)"
                )
            new = self._reshape_features(node, spec, n, bool(at.get("allowzero", 0)))
        if self.kind != "raw" and self.kind != "bits" and new != self.shape:
            raise UnsupportedModelError(f"{self.g.where(node)}: reshaping a layer's output to {new}")
        if self.kind == "raw":
            self.alpha, self.beta = self.alpha.reshape(new), self.beta.reshape(new)
        self.shape = new

    def _reshape_features(self, node: onnx.NodeProto, spec: list[int], n: int, allowzero: bool) -> tuple[int, ...]:
        """The feature shape (without the batch) that Reshape(spec) gives ``n`` features of ``self.shape``."""
        rest = []
        for i, s in enumerate(spec[1:], start=1):
            if s == 0 and not allowzero:
                s = self.shape[i - 1] if i - 1 < len(self.shape) else -2  # -2: refused below
            rest.append(s)
        bad = any(s < -1 for s in rest) or rest.count(-1) > 1
        if not bad and -1 in rest:
            known = math.prod(s for s in rest if s != -1)
            bad = known <= 0 or n % known != 0
            rest = [n // known if s == -1 and not bad else s for s in rest]
        if bad or math.prod(rest) != n or any(s <= 0 for s in rest):
            raise UnsupportedModelError(f"{self.g.where(node)}: reshaping {n} features to {spec}")
        return tuple(rest)

    def _broadcast(self, node: onnx.NodeProto, value: np.ndarray, what: str) -> np.ndarray:
        value = np.asarray(value, np.float64)
        if value.ndim == len(self.shape) + 1 and value.shape[0] == 1:
            value = value[0]
        try:
            if value.ndim > len(self.shape) or np.broadcast_shapes(value.shape, self.shape) != self.shape:
                raise ValueError
        except ValueError:
            raise UnsupportedModelError(
                f"{self.g.where(node)}: {what} of shape {value.shape} does not broadcast per unit over {self.shape}"
            ) from None
        return np.broadcast_to(value, self.shape)

    def affine(self, node: onnx.NodeProto, tensor: str) -> str:
        if self.kind == "bits":
            raise UnsupportedModelError(
                f"{self.g.where(node)}: arithmetic on binarized values (they must feed a linear layer)"
            )
        op = node.op_type
        if op == "BatchNormalization":
            self.batch_norm(node)
        elif op == "Neg":
            self.alpha, self.beta = -self.alpha, -self.beta
        else:
            main = list(node.input).index(tensor)
            other = self.g.need_const(node, 1 - main, "the other operand")
            c = self._broadcast(node, other, "the constant operand")
            if op == "Add":
                self.beta = self.beta + c
            elif op == "Sub" and main == 0:
                self.beta = self.beta - c
            elif op == "Sub":
                self.alpha, self.beta = -self.alpha, c - self.beta
            elif op == "Mul":
                self.alpha, self.beta = self.alpha * c, self.beta * c
            elif main == 0:
                if np.any(c == 0):
                    raise UnsupportedModelError(f"{self.g.where(node)}: division by a constant that contains 0")
                self.alpha, self.beta = self.alpha / c, self.beta / c
            else:
                raise UnsupportedModelError(f"{self.g.where(node)}: dividing a constant by the layer is not affine")
        self._track(node)
        return node.output[0]

    def batch_norm(self, node: onnx.NodeProto) -> None:
        at = _attrs(node)
        if at.get("training_mode", 0):
            raise UnsupportedModelError(f"{self.g.where(node)}: training_mode=1 batch norm is not an inference model")
        if any(o and o in self.g.consumers for o in node.output[1:]):
            raise UnsupportedModelError(f"{self.g.where(node)}: running statistics outputs are used")
        params = [np.asarray(self.g.need_const(node, i, what), np.float64).reshape(-1)
                  for i, what in ((1, "scale (gamma)"), (2, "bias (beta)"), (3, "mean"), (4, "variance"))]
        gamma, bias, mean, var = params
        if np.any(var < 0):
            raise UnsupportedModelError(f"{self.g.where(node)}: negative variance {var[var < 0][0]:g}")
        eps = float(at.get("epsilon", 1e-5))
        if not np.all(var + eps > 0):
            raise UnsupportedModelError(f"{self.g.where(node)}: variance + epsilon is not positive")
        channels = self.shape[0]
        shape = (channels,) + (1,) * (len(self.shape) - 1)
        if any(p.size != channels for p in params):
            raise UnsupportedModelError(
                f"{self.g.where(node)}: parameters of size {[p.size for p in params]} for {channels} channels"
            )
        k = (gamma / np.sqrt(var + eps)).reshape(shape)
        self.alpha = self.alpha * k
        self.beta = (self.beta - mean.reshape(shape)) * k + bias.reshape(shape)

    def linear(self, node: onnx.NodeProto, tensor: str) -> str:
        if self.kind == "pre":
            raise UnsupportedModelError(
                f"{self.g.where(node)}: two linear layers with no sign activation between them"
            )
        if len(self.shape) != 1:
            raise UnsupportedModelError(
                f"{self.g.where(node)}: linear layer on a tensor of shape {self.shape}; flatten it first"
            )
        if node.input[0] != tensor:
            raise UnsupportedModelError(f"{self.g.where(node)}: the layer input must be the first operand")
        at = _attrs(node)
        weight = np.asarray(self.g.need_const(node, 1, "the weight"), np.float64)
        if node.op_type == "Gemm":
            if at.get("transA", 0):
                raise UnsupportedModelError(f"{self.g.where(node)}: transA=1 on the layer input")
            weight = weight.T if at.get("transB", 0) else weight
        if weight.ndim != 2 or weight.shape[0] != self.shape[0]:
            raise UnsupportedModelError(
                f"{self.g.where(node)}: weight of shape {weight.shape} does not fit {self.shape[0]} inputs"
            )
        W = weight.T.copy()  # (m, n)
        m = W.shape[0]
        alpha, beta = np.ones(m), np.zeros(m)
        prefix = []
        if node.op_type == "Gemm":
            a, b = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
            C = self.g.need_const(node, 2, "the bias C") if len(node.input) > 2 and node.input[2] else None
            alpha = alpha * a
            if C is not None:
                C64 = np.asarray(C, np.float64)
                if C64.size not in (1, m):
                    raise UnsupportedModelError(f"{self.g.where(node)}: bias C of shape {C64.shape} for {m} units")
                beta = beta + b * (C64.reshape(()) if C64.size == 1 else C64.reshape(m))
            prefix = _gemm_remainder(node, a, b, C, self.g.dtype)
        integer = self.kind == "bits"
        if self.kind == "raw":
            # Fold the raw input's affine map (e.g. normalisation) into the first layer.
            if not np.any(self.alpha):
                raise UnsupportedModelError(f"{self.g.where(node)}: the input is multiplied by zero")
            beta = beta + alpha * (W @ self.beta)
            if np.all(self.alpha == self.alpha.flat[0]):
                alpha = alpha * self.alpha.flat[0]
            else:
                W = W * self.alpha[None, :]
        self.stage = _Stage(W, alpha, beta, integer, node, calib_input=node.output[0], calib_prefix=prefix)
        self.kind, self.shape = "pre", (m,)
        self.alpha, self.beta = self.stage.alpha, self.stage.beta
        return node.output[0]

    def binarize(self, node: onnx.NodeProto, tensor: str) -> str:
        if self.kind == "bits":
            raise UnsupportedModelError(f"{self.g.where(node)}: binarizing values that are already ±1")
        sigma, strict, out_node, tie = self._binarizer(node, tensor)
        if self.kind == "raw":
            if len(self.chain.stages):
                raise UnsupportedModelError(f"{self.g.where(node)}: input binarization after a layer")
            stage = _Stage(None, self.alpha.reshape(-1), self.beta.reshape(-1), False, node)
        else:
            stage = self.stage
            stage.alpha, stage.beta = self.alpha, self.beta
            stage.calib_nodes.append(node)
            if out_node is not node:
                stage.calib_nodes.append(out_node)
        stage.alpha, stage.beta = sigma * stage.alpha, sigma * stage.beta
        stage.output, stage.tie = out_node.output[0], ("-1" if strict else tie)
        self.chain.stages.append(stage)
        self.kind, self.stage = "bits", None
        return out_node.output[0]

    def _binarizer(self, node: onnx.NodeProto, tensor: str):
        """(sigma, strict, last node, tie): the binarizer is +1 iff sigma * y >= 0 (> 0 if strict)."""
        if node.op_type == "Sign":
            return 1.0, False, node, "0"
        main = list(node.input).index(tensor)
        c0 = self._broadcast(node, self.g.need_const(node, 1 - main, "the comparison threshold"), "threshold")
        self.beta = self.beta - c0  # compare y - c0 with 0
        op = node.op_type
        if main == 1:  # c0 OP y  is  y OP' c0
            op = _MIRRORED[op]
        users = self.g.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Where" or users[0].input[0] != node.output[0]:
            raise UnsupportedModelError(f"{self.g.where(node)}: a comparison must feed Where(cond, 1, -1) only")
        where = users[0]
        p = self.g.need_const(where, 1, "the value if true")
        q = self.g.need_const(where, 2, "the value if false")
        if p.size != 1 or q.size != 1 or {float(p.reshape(-1)[0]), float(q.reshape(-1)[0])} != {1.0, -1.0}:
            raise UnsupportedModelError(f"{self.g.where(where)}: binarization must output 1 and -1")
        positive_if_true = float(p.reshape(-1)[0]) == 1.0
        # +1 iff sigma*(y - c0) >= 0, or > 0 when strict
        sigma, strict = {
            ("GreaterOrEqual", True): (1, False), ("GreaterOrEqual", False): (-1, True),
            ("Greater", True): (1, True), ("Greater", False): (-1, False),
            ("Less", True): (-1, True), ("Less", False): (1, False),
            ("LessOrEqual", True): (-1, False), ("LessOrEqual", False): (1, True),
        }[(op, positive_if_true)]
        return float(sigma), strict, where, "-1" if strict else "+1"


def _gemm_remainder(node, a: float, b: float, C, dtype) -> list:
    """Nodes computing Gemm's ``alpha * P + beta * C`` from its product P, for calibration."""
    out = node.output[0]
    nodes, current = [], "__bnnmip_product"
    if a != 1.0:
        nodes.append(("Mul", current, np.asarray(a, dtype), "__bnnmip_scaled"))
        current = "__bnnmip_scaled"
    if C is not None:
        nodes.append(("Add", current, np.asarray(b * np.asarray(C), dtype), out))
    elif nodes:
        nodes[-1] = nodes[-1][:3] + (out,)
    else:
        nodes.append(("Identity", current, None, out))
    return nodes


# ---------------------------------------------------------------------- thresholds
def _build_stages(chain: _Chain, graph: _Graph) -> tuple[list[Layer], InputBinarization | None]:
    binarization, layers = None, []
    for stage in chain.stages:
        if stage.weight is None:
            direction, threshold = _real_thresholds(stage.alpha, stage.beta, stage.tie == "-1")
            binarization = InputBinarization(direction, threshold, np.abs(stage.alpha))
            continue
        if stage.integer:
            if not np.all(np.abs(stage.weight) == 1):
                bad = stage.weight[np.abs(stage.weight) != 1].reshape(-1)[0]
                raise UnsupportedModelError(
                    f"{graph.where(stage.node)}: weights of a binarized layer must be ±1, found {bad:g}"
                )
            layers.append(_calibrated_layer(stage, graph))
        else:
            direction, threshold = _real_thresholds(stage.alpha, stage.beta, stage.tie == "-1")
            weight = stage.weight * direction[:, None]
            if np.all(np.abs(weight) == 1):
                weight = weight.astype(np.int8)
            layers.append(Layer(weight, threshold, np.abs(stage.alpha), integer=False))
    for stage in chain.stages:
        if not (np.isfinite(stage.alpha).all() and np.isfinite(stage.beta).all()):
            raise UnsupportedModelError(f"{graph.where(stage.node)}: the folded scale or shift overflows float64")
    if not (np.isfinite(chain.out_weight).all() and np.isfinite(chain.out_bias).all()):
        raise UnsupportedModelError(f"{graph.path}: the output layer's folded weights or bias overflow float64")
    for prev, layer in zip([binarization] + layers, layers, strict=False):
        width = prev.width if prev is not None else graph.input_shape
        if prev is not None and layer.fan_in != width:
            raise UnsupportedModelError(f"{graph.path}: a layer of fan-in {layer.fan_in} follows {width} units")
    return layers, binarization


def _real_thresholds(alpha: np.ndarray, beta: np.ndarray, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    r"""Directions d and thresholds θ with :math:`\alpha a + \beta \ge 0 \iff d\,a \ge θ` (``> 0`` if strict)."""
    direction = np.where(alpha < 0, -1, 1).astype(np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        threshold = np.where(alpha != 0, -beta / np.abs(alpha), 0.0)
    if strict:
        threshold = np.nextafter(threshold, np.inf)
    constant_on = (beta > 0) | ((beta == 0) & (not strict))
    threshold = np.where(alpha == 0, np.where(constant_on, -np.inf, np.inf), threshold)
    return direction, threshold


def _calibrated_layer(stage: _Stage, graph: _Graph) -> Layer:
    """Integer thresholds read off onnxruntime on every pre-activation value the layer can take."""
    m, r = stage.weight.shape
    values = np.arange(-r, r + 1, 2, dtype=np.float64)  # the fan-in's parity
    out = _run_stage(stage, graph, np.repeat(values[:, None], m, axis=1))
    on = out >= 0
    rising = np.all(on[1:] >= on[:-1], axis=0)
    falling = np.all(on[1:] <= on[:-1], axis=0)
    constant = on.all(axis=0) | (~on).all(axis=0)
    if np.any(~(rising | falling)):
        j = int(np.flatnonzero(~(rising | falling))[0])
        raise UnsupportedModelError(
            f"{graph.where(stage.node)}: unit {j} is not a threshold of its pre-activation in onnxruntime"
        )
    if np.any((out == 0).all(axis=0)):
        j = int(np.flatnonzero((out == 0).all(axis=0))[0])
        raise UnsupportedModelError(f"{graph.where(stage.node)}: unit {j} always outputs Sign(0) = 0, not ±1")
    # Orientation: rising units keep their row, falling ones negate it (a' = -a).
    flip = falling & ~rising | (constant & (stage.alpha < 0))
    direction = np.where(flip, -1, 1)
    on_oriented = np.where(flip[None, :], on[::-1], on)  # indexed by a' = -r + 2k
    first_on = np.argmax(on_oriented, axis=0)
    threshold = np.where(on_oriented.any(axis=0), values[first_on], r + 2.0)
    out_oriented = np.where(flip[None, :], out[::-1], out)
    at_threshold = out_oriented[np.minimum(first_on, len(values) - 1), np.arange(m)]
    sign_ties = on_oriented.any(axis=0) & (at_threshold == 0)
    zeros_elsewhere = (out == 0).sum(axis=0) > sign_ties
    if np.any(zeros_elsewhere):
        j = int(np.flatnonzero(zeros_elsewhere)[0])
        raise UnsupportedModelError(f"{graph.where(stage.node)}: unit {j} outputs 0 at several pre-activations")
    weight = (stage.weight * direction[:, None]).astype(np.int8)
    return Layer(weight, threshold.astype(np.float64), np.abs(stage.alpha), integer=True, sign_ties=sign_ties)


def _run_stage(stage: _Stage, graph: _Graph, pre: np.ndarray) -> np.ndarray:
    """Run the stage's own nodes (linear output → binarizer output) in onnxruntime on ``pre``."""

    initializers, seen = [], set()
    prefix_nodes = []
    for op, inp, const, out in stage.calib_prefix:
        inputs = [inp]
        if const is not None:
            name = f"{out}__const"
            initializers.append(onnx.numpy_helper.from_array(np.asarray(const), name))
            inputs.append(name)
        prefix_nodes.append(helper.make_node(op, inputs, [out]))
    feed = "__bnnmip_product" if stage.calib_prefix else stage.calib_input
    for node in stage.calib_nodes:
        for name in node.input:
            if name and name not in seen and graph.const(name) is not None:
                seen.add(name)
                initializers.append(onnx.numpy_helper.from_array(np.asarray(graph.const(name)), name))
    m = pre.shape[1]
    dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(graph.dtype))
    mini = helper.make_model(
        helper.make_graph(
            prefix_nodes + list(stage.calib_nodes), "calibration",
            [helper.make_tensor_value_info(feed, dtype, [None, m])],
            [helper.make_tensor_value_info(stage.output, dtype, None)],
            initializers,
        ),
        opset_imports=[helper.make_opsetid("", graph.opset)],
        ir_version=graph.model.ir_version,
    )
    try:
        session = ort_session(mini.SerializeToString())
        (out,) = session.run([stage.output], {feed: pre.astype(graph.dtype)})
    except Exception as e:  # onnxruntime raises its own exception types
        raise UnsupportedModelError(f"{graph.where(stage.node)}: onnxruntime cannot run this layer ({e})") from e
    out = np.asarray(out, np.float64).reshape(len(pre), m)
    if not np.all(np.isin(out, (-1.0, 0.0, 1.0))):
        raise UnsupportedModelError(f"{graph.where(stage.node)}: the activation outputs values other than ±1")
    return out
