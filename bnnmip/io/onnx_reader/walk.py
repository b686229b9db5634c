r"""The walk along the layer chain, and the state it carries from node to node.

The walker starts at the graph input and follows the one chain of non-constant nodes, handing
each node to the handlers its op type has in a pattern table (see :mod:`.patterns`).  Between
nodes it keeps the current tensor as a per-unit affine function of the last linear layer's
output, :math:`y = \alpha \odot (W\,\mathrm{in}) + \beta` (:class:`WalkState`), and collects the
threshold stages found so far (:class:`Chain`).  The chain ends at a graph output.

onnxruntime runs the whole graph, not only the chain, so after the walk every node of the graph
must be accounted for (:func:`check_off_chain`): a node on the chain was read by a handler, and
any other node must be a constant that bnnmip folds, within the folding limits and checked
against onnxruntime.  Anything else (a side ``ConstantOfShape``, a branch of MatMuls, a second
output computed from the input) is refused, naming the node, before onnxruntime runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx

from ...errors import UnsupportedModelError
from .graph import Graph
from .ops import Op


class Tie(str, Enum):
    """What a binarizer outputs where its input is exactly 0."""

    PLUS = "+1"
    MINUS = "-1"
    ZERO = "0"  # ONNX Sign(0) = 0


class Kind(Enum):
    """What the current tensor on the chain is."""

    RAW = "the raw input (under an affine map)"
    PRE = "an affine function of a linear layer's output"
    BITS = "±1 values"
    DONE = "the logits (the output layer is closed)"


@dataclass(frozen=True)
class GemmScale:
    """Gemm's ``alpha * P + beta * C`` after its product ``P``: calibration recomputes it in ONNX."""

    alpha: float
    beta: float
    bias: np.ndarray | None  # C as written in the graph, None if absent


@dataclass
class Stage:
    """One threshold stage found on the chain (a hidden layer or the input binarization)."""

    weight: np.ndarray | None  # (m, n) float64, None for the input binarization
    alpha: np.ndarray
    beta: np.ndarray
    integer: bool
    node: onnx.NodeProto  # the linear node (or the first node of the binarization)
    calib_input: str = ""  # tensor fed with integer pre-activations for calibration
    calib_nodes: list[onnx.NodeProto] = field(default_factory=list)
    gemm: GemmScale | None = None  # a Gemm's scale and bias, rebuilt as nodes for calibration
    output: str = ""
    tie: Tie = Tie.PLUS
    exact_below: float = np.inf  # the binarizer computes a sign only where |y| is below this
    bits: float = 1.0  # the binarizer outputs ±bits in the graph


@dataclass
class Chain:
    """What the walk found: the threshold stages in order and the output layer."""

    stages: list[Stage] = field(default_factory=list)
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # every node the walk read, in order
    out_weight: np.ndarray | None = None
    out_bias: np.ndarray | None = None
    logits_name: str = ""
    batch_targets: dict[str, tuple[int, ...]] = field(default_factory=dict)  # Reshape output -> target, batch -1

    def tie_rule(self) -> str:
        """The tie rule of the network, in words (mixed if the stages differ)."""
        ties = {s.tie for s in self.stages}
        if ties == {Tie.ZERO}:
            return "Sign(0) = 0 in ONNX, read as +1"
        if ties == {Tie.MINUS}:
            return "sign(0) = -1"
        if ties <= {Tie.PLUS}:
            return "sign(0) = +1"
        return "mixed per layer: " + ", ".join(sorted(t.value for t in ties))


@dataclass
class WalkState:
    r"""Where the walk stands: the current tensor's kind and feature shape, and its affine map.

    The current tensor is :math:`y = \alpha \odot (W\,\mathrm{in}) + \beta`, with ``W`` the
    open ``stage``'s weight (or the identity on the raw input).
    """

    graph: Graph
    shape: tuple[int, ...]  # feature shape of the current tensor (without the batch)
    alpha: np.ndarray
    beta: np.ndarray
    kind: Kind = Kind.RAW
    stage: Stage | None = None  # the open linear layer, between its product and its binarizer
    chain: Chain = field(default_factory=Chain)
    bits_scale: float = 1.0  # the graph's binarized values are ±bits_scale (bnnmip's are ±1)

    @classmethod
    def start(cls, graph: Graph) -> WalkState:
        """The state at the graph input: the identity map on the raw input."""
        shape = graph.input_shape
        return cls(graph, shape, np.ones(shape), np.zeros(shape))

    def where(self, node: onnx.NodeProto) -> str:
        """The prefix of an error message about ``node``."""
        return self.graph.where(node)

    def track(self, node: onnx.NodeProto) -> None:
        """Record ``node`` as part of the open layer, so calibration reruns it."""
        if self.stage is not None and self.kind in (Kind.PRE, Kind.RAW):
            self.stage.calib_nodes.append(node)

    def visit(self, node: onnx.NodeProto) -> None:
        """Record ``node`` as read by the walk (a multi-node idiom visits the nodes after its first)."""
        self.chain.nodes.append(node)

    def consume(self, node: onnx.NodeProto) -> str:
        """Track ``node`` (a one-output node the walk has read) and return its output."""
        self.track(node)
        return node.output[0]

    def broadcast(self, node: onnx.NodeProto, value: np.ndarray, what: str) -> np.ndarray:
        """``value`` (float64) broadcast to one number per unit of the current tensor."""
        value = np.asarray(value, np.float64)
        if value.ndim == len(self.shape) + 1 and value.shape[0] == 1:
            value = value[0]
        try:
            if value.ndim > len(self.shape) or np.broadcast_shapes(value.shape, self.shape) != self.shape:
                raise ValueError
        except ValueError:
            raise UnsupportedModelError(
                f"{self.where(node)}: {what} of shape {value.shape} does not broadcast per unit over {self.shape}"
            ) from None
        return np.broadcast_to(value, self.shape)

    def close_output(self, tensor: str) -> None:
        """The open layer is the output layer and ``tensor`` its logits."""
        if not any(stage.weight is not None for stage in self.chain.stages):
            raise UnsupportedModelError(
                f"{self.graph.path}: no hidden sign layer before the output layer: not a binarized network"
            )
        self.chain.out_weight = self.alpha[:, None] * self.stage.weight
        self.chain.out_bias = np.array(self.beta, np.float64)
        self.chain.logits_name = tensor
        self.kind = Kind.DONE


#: A pattern handler: ``(state, node, tensor) -> tensor after the nodes it consumed``, or ``None``
#: for "not mine", with the state untouched (the next handler for the op type is tried).
#: ``tensor`` is the input of ``node`` on the chain.  A handler that recognises its pattern but
#: finds it malformed raises :class:`~bnnmip.errors.UnsupportedModelError` naming the node.
Handler = Callable[[WalkState, onnx.NodeProto, str], str | None]

#: Ops that may follow the output layer's Softmax.
_AFTER_SOFTMAX = frozenset({Op.IDENTITY, Op.CAST})


def walk(graph: Graph, patterns: Mapping[str, Sequence[Handler]],
         shared: Mapping[str, Sequence[Handler]] | None = None) -> Chain:
    """Consume the chain of nodes from the graph input to its output.

    Parameters
    ----------
    graph
        The graph index.
    patterns
        Op type → handlers, tried in order until one takes the node (:data:`.patterns.PATTERNS`).
    shared
        Op type → handlers of idioms that read one tensor in several nodes
        (:data:`.patterns.SHARED`), keyed by the op type of the first of those nodes; they alone
        may take a tensor that feeds several nodes.

    Returns
    -------
    Chain
        The threshold stages and the output layer.

    Raises
    ------
    UnsupportedModelError
        A node no handler takes (the message names it and its op type), or a chain that is not
        a binarized network.
    """
    state = WalkState.start(graph)
    tensor = graph.input_name
    while True:
        users = graph.consumers.get(tensor, [])
        if not users:
            break
        if len(users) > 1:
            tensor = _step_shared(state, users, tensor, shared or {})
        else:
            tensor = _step(state, users[0], tensor, patterns)
    return _finish(state, tensor)


def _step_shared(state: WalkState, users: list[onnx.NodeProto], tensor: str,
                 shared: Mapping[str, Sequence[Handler]]) -> str:
    """A tensor read by several nodes: an idiom that consumes them all (the first one in graph order)."""
    for handler in shared.get(users[0].op_type, ()):
        out = handler(state, users[0], tensor)
        if out is not None:
            return out
    names = [f"{n.name or n.output[0]} ({n.op_type})" for n in users]
    raise UnsupportedModelError(
        f"{state.graph.path}: tensor {tensor!r} feeds several nodes {names}; bnnmip reads a chain of layers "
        "(of the idioms that read one tensor twice, it knows the straight-through x + (sign(x) - x).detach())"
    )


def _step(state: WalkState, node: onnx.NodeProto, tensor: str, patterns: Mapping[str, Sequence[Handler]]) -> str:
    """Hand ``node`` to its handlers; the tensor the walk continues from."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedModelError(f"{state.where(node)}: op {node.domain}.{op} is not an ONNX op")
    state.visit(node)
    if state.kind is Kind.DONE and op not in _AFTER_SOFTMAX:
        raise UnsupportedModelError(f"{state.where(node)}: nothing may follow the output layer's Softmax")
    for handler in patterns.get(op, ()):
        out = handler(state, node, tensor)
        if out is not None:
            return out
    raise UnsupportedModelError(f"{state.where(node)}: op {op} cannot be represented in a BNN")


def _finish(state: WalkState, tensor: str) -> Chain:
    path = state.graph.path
    if tensor not in state.graph.outputs:
        raise UnsupportedModelError(f"{path}: the layer chain ends at {tensor!r}, which is not a graph output")
    if state.kind is Kind.BITS:
        raise UnsupportedModelError(
            f"{path}: output layer missing: the graph ends with binarized values ({tensor!r})"
        )
    if state.kind is Kind.PRE:
        state.close_output(tensor)
    if state.kind is not Kind.DONE:
        raise UnsupportedModelError(f"{path}: no linear layer and sign activation on the chain")
    return state.chain


def check_off_chain(graph: Graph, chain: Chain) -> None:
    """Refuse a node that is neither on the chain nor a constant bnnmip folds (and checks).

    Folding the off-chain nodes here applies the same rules as to the chain's constants: the
    element and byte limits, the op table, and the onnxruntime check of every fold.
    """
    on_chain = {tuple(node.output) for node in chain.nodes}  # outputs are unique (checked with the file)
    for node in graph.model.graph.node:
        if tuple(node.output) in on_chain:
            continue
        for out in node.output:
            if out and graph.const(out) is None:
                raise UnsupportedModelError(
                    f"{graph.where(node)}: not on the layer chain and not a constant (onnxruntime would run it "
                    "on the input); bnnmip reads one chain of layers"
                )
