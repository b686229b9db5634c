r"""ONNX graph → :class:`~bnnmip.network.BNN`: a pattern consumer along the layer chain.

The reader is a short pipeline, one module a step:

1. :mod:`.graph` indexes the graph (producers, consumers, the input) and folds constant
   subgraphs with numpy (``Sign`` of a weight initializer, ``Cast`` of int8 weights, ...);
2. :mod:`.walk` walks from the graph input along the one chain of non-constant nodes, keeping the
   current tensor as a per-unit affine function of the last linear layer's output,
   :math:`y = \alpha \odot (W\,\mathrm{in}) + \beta`, and hands each node to the handlers of
   :data:`.patterns.PATTERNS` (op type → handlers in :mod:`.passthrough`, :mod:`.affine`,
   :mod:`.binarize`);
3. :mod:`.calibrate` turns the stages into layers: real thresholds in float64, integer ones read
   off onnxruntime on every pre-activation the layer can see;
4. :mod:`.self_check` runs the whole graph in onnxruntime on probe inputs: a model whose float32
   arithmetic does not compute what its constants say (overflow, cancellation) is refused, so a
   model that loads is one the onnxruntime judge agrees with.

Before step 1, :mod:`.reference` rewrites the custom QONNX / FINN ops bnnmip reads into standard
nodes; the walk, calibration, the self-check and every later judgement by onnxruntime use that
standard *reference graph* (with a batch fixed at 1 freed), never a custom op.
"""

from __future__ import annotations

import os

import numpy as np

from ...errors import InvalidArgumentError
from ...network import BNN
from ...validate import check_levels
from ..onnx_file import read_model
from .calibrate import build_stages
from .graph import Graph
from .origin import OnnxOrigin, any_batch
from .patterns import PATTERNS, SHARED
from .reference import CUSTOM_OPS, judged_model, standard_model
from .scaled import exact_sum_rows
from .self_check import self_check
from .walk import check_off_chain, walk

__all__ = ["OnnxOrigin", "load_onnx"]


def load_onnx(
    path: str | os.PathLike, *, input_range: tuple[float, float] = (0.0, 1.0), levels: int | None = None
) -> BNN:
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
    levels = check_levels(levels)
    model, read_as = standard_model(read_model(path, custom_ops=CUSTOM_OPS), str(path))
    graph = Graph(model, str(path), read_as)
    _check_range_fits(input_range, lo, hi, graph.dtype)
    chain = walk(graph, PATTERNS, SHARED)
    check_off_chain(graph, chain)
    layers, binarization = build_stages(chain, graph)
    reference = any_batch(judged_model(model, chain.batch_targets))
    origin = OnnxOrigin(
        str(path), reference.SerializeToString(), graph.input_name, graph.input_shape, chain.logits_name, graph.dtype,
    )
    net = BNN(
        layers=tuple(layers),
        out_weight=exact_sum_rows(chain.out_weight),
        out_bias=chain.out_bias,
        input_binarization=binarization,
        input_range=(lo, hi),
        levels=levels,
        input_shape=graph.input_shape,
        tie_rule=chain.tie_rule(),
        source=str(path),
        origin=origin,
    )
    self_check(net, chain, graph)
    return net


def _checked_range(input_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"input_range={input_range!r}: expected two numbers (lo, hi)") from e
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InvalidArgumentError(f"input_range={input_range!r}: expected finite lo < hi")
    if not np.isfinite(hi - lo):
        raise InvalidArgumentError(f"input_range={input_range!r}: hi - lo overflows")
    return lo, hi


def _check_range_fits(input_range, lo: float, hi: float, dtype: type) -> None:
    """The range must hold in the model's input type (float32 inputs overflow past ~3.4e38)."""
    limit = float(np.finfo(dtype).max)
    if max(abs(lo), abs(hi), hi - lo) > limit:
        raise InvalidArgumentError(f"input_range={input_range!r}: outside what the model's {np.dtype(dtype).name} "
                                   f"input holds (|value| <= {limit:.3g})")
