"""The fast forward pass behind :meth:`bnnmip.network.BNN.logits`: which engine computes which rows.

1. The compiled kernel (:mod:`bnnmip.kernel`): exact integer arithmetic, one call for the batch.
   It leaves to the float path the rows it cannot decide (inputs off the input grid or a hair from
   a threshold, NaN or infinite values), and every row when it is not built or the network has
   real-valued weights.
2. The fused float32 kernel (:mod:`bnnmip.fused`): one product and one sign per layer, near
   units recomputed in float64; it takes non-negative finite inputs of networks without input
   binarization.
3. The general path (:func:`general`): layer by layer (:meth:`bnnmip.network.Layer.signs`); it
   takes everything and raises on NaN or infinite inputs.

Batches of more than :data:`~bnnmip.threads.CHUNK_ROWS` rows run in row chunks, spread over
:func:`~bnnmip.threads.n_threads` threads from :data:`~bnnmip.threads.PARALLEL_ROWS` rows on (the
kernel and numpy release the GIL); the float paths run with BLAS held to one thread.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError
from .float32 import row_abs_sum
from .fused import FusedForward
from .kernel import Kernel
from .threads import CHUNK_ROWS, buffer, run_chunks, single_threaded_blas


class FastPath:
    """The engines of one network (see the module docstring); call it on a 2-D float batch."""

    def __init__(self, net):
        self.net = net
        self.kernel = Kernel.of(net)
        self.fused = FusedForward.of(net)
        self.out_weight_t = np.ascontiguousarray(net.out_weight.T, dtype=np.float64)

    def __call__(self, X: np.ndarray, out: np.ndarray) -> None:
        """Logits of the rows ``X`` (float32 or float64, 2-D) into ``out``."""
        if len(X) <= CHUNK_ROWS:
            self.chunk(X, out)
        else:
            run_chunks(lambda start, stop: self.chunk(X[start:stop], out[start:stop]), len(X))

    def chunk(self, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of one chunk: the compiled kernel, then the float path for the rows it leaves."""
        if self.kernel is not None:
            left = self.kernel(x, out)
            if left is not None:
                if len(left):
                    part = np.empty((len(left), out.shape[1]))
                    self.float_path(x[left], part)
                    out[left] = part
                return
        self.float_path(x, out)

    def float_path(self, x: np.ndarray, out: np.ndarray) -> None:
        """The fused float32 kernel, else the general path (BLAS on one thread)."""
        with single_threaded_blas():
            if self.fused is None or not self.fused(x, out):
                general(self.net, x, out, self.out_weight_t)


def general(net, x: np.ndarray, out: np.ndarray, out_weight_t: np.ndarray) -> None:
    """Logits of the rows ``x`` into ``out``, layer by layer in per-thread buffers; raises
    :class:`~bnnmip.errors.InvalidArgumentError` on NaN or infinite inputs."""
    r = len(x)
    x64 = x if x.dtype == np.float64 else None
    x32 = x
    if x64 is not None:
        x32 = buffer(0, x.shape, np.float32)
        with np.errstate(over="ignore"):  # beyond float32's range: refined in float64 (see signs)
            np.copyto(x32, x64)
    abs_sum = row_abs_sum(x32)  # non-finite exactly where x has NaN, inf or a float32 overflow
    if not np.isfinite(abs_sum).all() and not np.isfinite(x).all():
        raise InvalidArgumentError("X: contains NaN or infinite values")
    inp, inp64 = x32, x64
    ib = net.input_binarization
    if ib is not None:
        xf = x64 if x64 is not None else x32.astype(np.float64)
        inp = np.where(xf * ib.direction >= ib.threshold, np.float32(1), np.float32(-1))
        inp64 = None
    for i, layer in enumerate(net.layers):
        real = ib is None and i == 0
        inp = layer.signs(inp, inp64, buffer(1 + i % 2, (r, layer.width), np.float32), abs_sum if real else None)
        inp64 = None
    h = buffer(6, inp.shape, np.float64)
    np.copyto(h, inp)
    np.matmul(h, out_weight_t, out=out)
    out += net.out_bias
