r"""Handlers for the binarizer idioms of training code: several nodes that compute a sign.

* **The detach straight-through estimator** ``y + (sign(y) - y).detach()`` (torch): ``Sign(y)``,
  ``Sub(sign, y)``, ``Add(y, sub)``, maybe an ``Identity`` for the detach — three nodes read ``y``.
  In floating point :math:`y + (\mathrm{sign}(y) - y)` is exactly :math:`\mathrm{sign}(y)` while
  :math:`|y| < 2^{p}` (``p`` the significand's bits: 24 for float32): for :math:`|y| \le 1/2` the
  rounding of :math:`1 - |y|` is at most :math:`2^{-25}` and the sum rounds back to 1; for
  :math:`1/2 \le |y| \le 2` the difference is exact (Sterbenz); above 2 the sum is exact and
  :math:`|y| - 1` is representable below :math:`2^p`.  Beyond that the idiom returns 0 or 2, so a
  stage records ``exact_below`` and the load checks its reach (integer layers are calibrated on
  every value; a real first stage is bounded over the input box).  Ties: ``y = 0`` gives 0, as
  ONNX ``Sign`` does.
* **Larq's** ``ste_sign`` exported by tf2onnx, ``Sign(Add(Sign(y), c))`` with :math:`0 < c < 1`:
  :math:`\{-1, 0, 1\} + c` has the signs :math:`\{-1, +1, +1\}`, a sign with ties to +1, exact in any
  float type (with :math:`-1 < c < 0`, ties go to -1).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...errors import UnsupportedModelError
from .binarize import binarize
from .ops import Op
from .walk import Kind, Tie, WalkState


def _only_user(state: WalkState, tensor: str) -> onnx.NodeProto | None:
    users = state.graph.consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _through_identity(state: WalkState, tensor: str) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The one node reading ``tensor``, looking through Identity nodes (a detach); and those Identities."""
    passed = []
    user = _only_user(state, tensor)
    while user is not None and user.op_type == Op.IDENTITY:
        passed.append(user)
        user = _only_user(state, user.output[0])
    return user, passed


def detach_ste(state: WalkState, node: onnx.NodeProto, tensor: str) -> str | None:
    """``Sign(y)``, ``Sub(sign, y)``, ``Add(y, sub)`` (Identities allowed between): a Sign of ``y``."""
    if state.kind not in (Kind.PRE, Kind.RAW) or node.op_type != Op.SIGN:
        return None
    sub, first = _through_identity(state, node.output[0])
    if sub is None or sub.op_type != Op.SUB or list(sub.input) != [first[-1].output[0] if first else node.output[0],
                                                                   tensor]:
        return None
    add, second = _through_identity(state, sub.output[0])
    diff = second[-1].output[0] if second else sub.output[0]
    if add is None or add.op_type != Op.ADD or sorted(add.input) != sorted([tensor, diff]):
        return None
    users = state.graph.consumers.get(tensor, [])
    if len(users) != 3 or {id(u) for u in users} != {id(node), id(sub), id(add)}:
        return None
    out = binarize(state, [node, *first, sub, *second, add], 1.0, False, Tie.ZERO)
    state.chain.stages[-1].exact_below = float(2.0 ** (np.finfo(state.graph.dtype).nmant + 1))
    return out


def double_sign(state: WalkState, node: onnx.NodeProto, tensor: str) -> str | None:
    """``Sign(Add(Sign(y), c))`` with ``0 < |c| < 1``: a sign of ``y`` with ties to the side of ``c``."""
    if state.kind not in (Kind.PRE, Kind.RAW):
        return None
    add = _only_user(state, node.output[0])
    if add is None or add.op_type != Op.ADD or len(add.input) != 2:
        return None
    outer = _only_user(state, add.output[0])
    if outer is None or outer.op_type != Op.SIGN:
        return None
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    c = state.graph.const(other)
    if c is None:
        return None
    c = np.asarray(c, np.float64)
    if c.size == 0 or not (np.all((c > 0) & (c < 1)) or np.all((c < 0) & (c > -1))):
        raise UnsupportedModelError(
            f"{state.where(add)}: Sign(Sign(y) + c) is a sign of y only for 0 < c < 1 (ties to +1, as Larq's "
            f"ste_sign writes it) or -1 < c < 0 (ties to -1), one sign for every unit; found c = "
            f"{c.reshape(-1)[:3].tolist()}"
        )
    state.broadcast(add, c, "the constant operand")
    plus = bool(c.reshape(-1)[0] > 0)
    return binarize(state, [node, add, outer], 1.0, not plus, Tie.PLUS if plus else Tie.MINUS)
