r"""Handlers for binarizers: the nodes that end a layer (or binarize the raw input).

``Sign(y)``, or ``Where(cmp(y, c), p, q)`` with cmp one of ``>=, >, <, <=`` and ``{p, q} = {s, -s}``
(a two-node idiom; ``s = 1`` usually, QONNX's ``BipolarQuant`` may scale), turn the open layer into
a threshold stage, written as :math:`+1` iff :math:`\sigma y \ge 0` (``> 0`` if strict); on the
raw input they form the input binarization.  Binarized values the graph scales by ``s`` are ±1 in
bnnmip, and ``s`` moves into the next layer's weights (:attr:`.walk.WalkState.bits_scale`).
"""

from __future__ import annotations

import onnx

from ...errors import UnsupportedModelError
from .ops import Op
from .walk import Kind, Stage, Tie, WalkState


def sign(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    """``Sign(y)``: +1 iff y >= 0, with ONNX's Sign(0) = 0 as the tie."""
    _refuse_binarized(state, node)
    return binarize(state, [node], 1.0, False, Tie.ZERO)


#: ``c OP y`` is ``y OP' c``.
_MIRRORED = {
    Op.GREATER_OR_EQUAL: Op.LESS_OR_EQUAL, Op.GREATER: Op.LESS,
    Op.LESS: Op.GREATER, Op.LESS_OR_EQUAL: Op.GREATER_OR_EQUAL,
}
#: The comparisons a ``Where`` binarizer may test.
COMPARISONS = tuple(_MIRRORED)
#: (comparison, Where gives +1 if true) -> (sigma, strict): +1 iff sigma*(y - c) >= 0, or > 0 when strict.
_COMPARE_SIGN = {
    (Op.GREATER_OR_EQUAL, True): (1, False), (Op.GREATER_OR_EQUAL, False): (-1, True),
    (Op.GREATER, True): (1, True), (Op.GREATER, False): (-1, False),
    (Op.LESS, True): (-1, True), (Op.LESS, False): (1, False),
    (Op.LESS_OR_EQUAL, True): (-1, False), (Op.LESS_OR_EQUAL, False): (1, True),
}


def compare_where(state: WalkState, node: onnx.NodeProto, tensor: str) -> str:
    """``Where(cmp(y, c), p, q)`` with ``{p, q} = {s, -s}``, ``s != 0``: two nodes, one binarizer."""
    _refuse_binarized(state, node)
    main = list(node.input).index(tensor)
    c0 = state.broadcast(node, state.graph.need_const(node, 1 - main, "the comparison threshold"), "threshold")
    state.beta = state.beta - c0  # compare y - c0 with 0
    op = Op(node.op_type) if main == 0 else _MIRRORED[node.op_type]
    users = state.graph.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != Op.WHERE or users[0].input[0] != node.output[0]:
        raise UnsupportedModelError(f"{state.where(node)}: a comparison must feed Where(cond, 1, -1) only")
    where = users[0]
    p = state.graph.need_const(where, 1, "the value if true")
    q = state.graph.need_const(where, 2, "the value if false")
    if p.size != 1 or q.size != 1 or float(p.reshape(-1)[0]) != -float(q.reshape(-1)[0]) or not p.any():
        raise UnsupportedModelError(
            f"{state.where(where)}: binarization must output 1 and -1 (or s and -s for one number s != 0, as "
            f"QONNX's BipolarQuant may scale them), not {p.reshape(-1)[:2].tolist()} and {q.reshape(-1)[:2].tolist()}"
        )
    true = float(p.reshape(-1)[0])
    sigma, strict = _COMPARE_SIGN[(op, true > 0)]
    return binarize(state, [node, where], float(sigma), strict, Tie.MINUS if strict else Tie.PLUS, abs(true))


def _refuse_binarized(state: WalkState, node: onnx.NodeProto) -> None:
    if state.kind is Kind.BITS:
        raise UnsupportedModelError(f"{state.where(node)}: binarizing values that are already ±1")


def binarize(state: WalkState, nodes: list[onnx.NodeProto], sigma: float, strict: bool, tie: Tie,
             scale: float = 1.0) -> str:
    """Close the open layer (or the raw input) as a threshold stage: +1 iff sigma*y >= 0 (> 0 if strict).

    ``nodes`` are the binarizer's nodes in order (calibration reruns them); the graph's binarized
    values are ``±scale``.  Returns the last node's output.
    """
    node, out = nodes[0], nodes[-1].output[0]
    for read in nodes:  # read by the walk, not off the chain (see walk.check_off_chain)
        state.visit(read)
    if state.kind is Kind.RAW:
        if len(state.chain.stages):
            raise UnsupportedModelError(f"{state.where(node)}: input binarization after a layer")
        stage = Stage(None, state.alpha.reshape(-1), state.beta.reshape(-1), False, node)
    else:
        stage = state.stage
        stage.alpha, stage.beta = state.alpha, state.beta
        stage.calib_nodes.extend(nodes)
    stage.alpha, stage.beta = sigma * stage.alpha, sigma * stage.beta
    stage.output, stage.tie, stage.bits = out, (Tie.MINUS if strict else tie), scale
    state.chain.stages.append(stage)
    state.kind, state.stage, state.bits_scale = Kind.BITS, None, scale
    return out
