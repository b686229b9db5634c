"""The load-time self-check: the whole graph in onnxruntime on probe inputs, against bnnmip's reading.

Integer layers are calibrated on onnxruntime already; a real-valued first stage (a real first
layer, or the input binarization) and the output layer are read in float64 arithmetic.  Extreme
constants (a batch-norm scale of 3e38, a mean of 1e30) make onnxruntime's float32 overflow or
cancel, so the graph no longer computes what its constants say.  This check refuses such a
model, so a model that loads is one the onnxruntime judge agrees with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import ExactnessError, UnsupportedModelError
from ...network import BNN, InputBinarization
from ..runtime import new_session, tie_inputs
from .graph import Graph
from .walk import Chain

_U32 = 2.0**-24  # unit roundoff of float32
_PROBE_ROWS = 64  # random probe inputs, besides the corners and the threshold crossings
_PROBE_UNITS = 128  # units of a real-valued first stage whose thresholds are probed from both sides
_PROBE_VALUES = 2**24  # at most this many probe values in all (rows x inputs)
_LOGIT_TOLERANCE = 1e-4  # relative to the row's largest logit (at least 1)


def self_check(net: BNN, chain: Chain, graph: Graph) -> None:
    """Run the original graph in onnxruntime on probe inputs and compare it with bnnmip's reading.

    The first stage's signs must agree unit by unit (except within float32 rounding of a
    threshold, probed from both sides), and the logits must agree where the first stage does.

    Raises
    ------
    UnsupportedModelError
        onnxruntime cannot run the model, or gives a different number of logits.
    ExactnessError
        onnxruntime's float32 arithmetic does not compute what the constants say.
    """
    first = net.threshold_stages[0]
    real_first = not getattr(first, "integer", False)  # InputBinarization, or a real-valued layer 1
    _check_reach(net, chain, graph)
    names = [chain.logits_name] + ([chain.stages[0].output] if real_first else [])
    X = _probe_inputs(net)
    results = _run_graph(net, graph, names, X)
    theirs = results[0]
    if theirs.shape[1] != net.n_classes:
        raise UnsupportedModelError(
            f"{graph.path}: onnxruntime gives {theirs.shape[1]} values for the logits {chain.logits_name!r}, "
            f"bnnmip reads {net.n_classes} classes"
        )
    rows = np.ones(len(X), bool)
    if real_first:
        rows = _check_first_stage(net, X, results[1] / chain.stages[0].bits, graph.where(chain.stages[0].node))
    rows[tie_inputs(net, X)] = False  # ONNX Sign(0) = 0 where bnnmip reads +1: not a disagreement
    _check_logits(net.logits(X[rows]), theirs[rows], graph)


def _check_reach(net: BNN, chain: Chain, graph: Graph) -> None:
    r"""A binarizer that computes a sign only for |y| below a bound must stay below it on every input.

    :math:`|y_j| \le |\alpha_j| \sum_i |W_{ji}|\, \rho + |\beta_j|` with :math:`\rho = \max(|lo|, |hi|)`
    for a stage on the raw input and 1 on ±1 inputs (the detach straight-through idiom computes a sign
    only below :math:`2^{24}` in float32).
    """
    reach = max(abs(net.input_range[0]), abs(net.input_range[1]))
    for k, stage in enumerate(chain.stages):
        if not np.isfinite(stage.exact_below):
            continue
        rho = reach if k == 0 and not stage.integer else 1.0
        spread = rho if stage.weight is None else np.abs(stage.weight).sum(axis=1) * rho
        bound = np.abs(stage.alpha.reshape(-1)) * spread + np.abs(stage.beta.reshape(-1))
        if np.any(bound * (1 + 2.0**-20) >= stage.exact_below):
            j = int(np.argmax(bound))
            raise ExactnessError(
                f"{graph.where(graph.producer[stage.output])}: unit {j} reaches |y| = {bound[j]:.6g} on the "
                f"input range, where the straight-through idiom y + (sign(y) - y) is no longer a sign in "
                f"{np.dtype(graph.dtype)} (exact below {stage.exact_below:g})"
            )


def _run_graph(net: BNN, graph: Graph, names: list[str], X: np.ndarray) -> list[np.ndarray]:
    """The tensors ``names`` of the original graph on the inputs ``X``, as float64 arrays (one row an input)."""
    model = onnx.load_model_from_string(net.origin.logits_model)
    declared = {o.name for o in model.graph.output}
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(graph.dtype))
    model.graph.output.extend(helper.make_tensor_value_info(n, dtype, None) for n in names if n not in declared)
    try:
        session = new_session(model.SerializeToString(), threads=1)
        results = session.run(names, {graph.input_name: X.astype(graph.dtype).reshape((-1,) + graph.input_shape)})
        return [np.asarray(r, np.float64).reshape(len(X), -1) for r in results]
    except Exception as e:  # onnxruntime raises its own exception types
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(f"{graph.path}: onnxruntime cannot run this model ({first_line})") from e


def _check_logits(ours: np.ndarray, theirs: np.ndarray, graph: Graph) -> None:
    if not np.isfinite(theirs).all():
        raise ExactnessError(f"{graph.path}: onnxruntime computes non-finite logits (float32 overflow)")
    error = np.abs(ours - theirs).max(axis=1, initial=0.0) / np.maximum(1.0, np.abs(theirs).max(axis=1, initial=0.0))
    if error.max(initial=0.0) > _LOGIT_TOLERANCE:
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
    if getattr(first, "integer", False):
        return np.concatenate(X)
    finite = np.flatnonzero(np.isfinite(first.threshold))
    tol = _first_stage_tolerance(net)
    if isinstance(first, InputBinarization):  # thresholds of the pixels themselves, from both sides
        raw = np.zeros(n)
        raw[finite] = (first.threshold * first.direction)[finite]
        for side in (-1.0, 1.0):
            X.append(np.clip(raw + side * first.direction * 4 * tol, lo, hi)[None, :])
        return np.concatenate(X)
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
