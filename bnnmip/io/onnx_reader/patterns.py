"""The pattern table: op type → the handlers that consume a node of that type on the layer chain.

A handler is a :data:`~.walk.Handler`, ``handler(state, node, tensor) -> str | None``: it gets the
walk state (:class:`~.walk.WalkState`), the node, and the node's input on the chain.  It either

* returns the tensor after the nodes it consumed; several nodes for a multi-node idiom (a
  comparison feeding ``Where`` returns ``Where``'s output), and the walk continues from there;
* returns ``None``, "not mine", before it changes the state: the next handler listed for the op
  type is tried, and when none is left the walk raises
  :class:`~bnnmip.errors.UnsupportedModelError` naming the node and its op type;
* or raises :class:`~bnnmip.errors.UnsupportedModelError` naming the node: the pattern is its own
  but cannot be represented exactly.

A handler updates the state in place: the affine map (``alpha``, ``beta``), the feature
``shape``, the ``kind`` of the current tensor and the open ``stage``; ``state.consume(node)``
records a node calibration must rerun and returns its output.

Adding a pattern is one handler (in the module of its family: :mod:`.passthrough`,
:mod:`.affine`, :mod:`.binarize`, :mod:`.idioms`, or a new one) and one entry here.  A multi-node
idiom is listed under the op type of its first node, before the general handler of that op, and
returns ``None`` when the nodes after it do not match; its nodes are recorded as read
(``state.visit``, which :func:`.binarize.binarize` does for the nodes it is given), or the check
that follows the walk refuses them as off the chain.  An idiom that reads one tensor in several
nodes is listed in :data:`SHARED` instead: only those may take a tensor that feeds several nodes.

Custom QONNX / FINN ops never reach the table: :mod:`.reference` rewrites them as standard nodes
first (``BipolarQuant`` and ``MultiThreshold`` become ``Where(GreaterOrEqual(...))``, read by
:func:`.binarize.compare_where`, or folded on weights).
"""

from __future__ import annotations

from .affine import add, batch_norm, div, linear, mul, neg, sub
from .binarize import COMPARISONS, compare_where, sign
from .idioms import detach_ste, double_sign
from .ops import Op
from .passthrough import cast, dropout, flatten, pass_through, reshape, softmax_tail
from .walk import Handler

#: Op type -> handlers, tried in order until one returns a tensor (see the module docstring).
PATTERNS: dict[str, tuple[Handler, ...]] = {
    Op.IDENTITY: (pass_through,),
    Op.DROPOUT: (dropout,),
    Op.CAST: (cast,),
    Op.FLATTEN: (flatten,),
    Op.RESHAPE: (reshape,),
    Op.MATMUL: (linear,),
    Op.GEMM: (linear,),
    Op.ADD: (add,),
    Op.SUB: (sub,),
    Op.MUL: (mul,),
    Op.DIV: (div,),
    Op.NEG: (neg,),
    Op.BATCH_NORM: (batch_norm,),
    Op.SIGN: (double_sign, sign),
    **{op: (compare_where,) for op in COMPARISONS},
    Op.SOFTMAX: (softmax_tail,),
    Op.LOG_SOFTMAX: (softmax_tail,),
}

#: Idioms that read one tensor in several nodes, keyed by the op type of the first of them.
SHARED: dict[str, tuple[Handler, ...]] = {
    Op.SIGN: (detach_ste,),
}
