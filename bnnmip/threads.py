"""The fast path's machinery: a small thread pool, BLAS held to one thread, per-thread scratch buffers.

The fast forward pass (:meth:`bnnmip.network.BNN.logits`) splits a batch into row chunks run on a
small thread pool (numpy releases the GIL in BLAS and ufunc loops), with BLAS itself held to one
thread: a multi-threaded OpenBLAS on a busy machine spends milliseconds waking its threads for
every small product.  The attacks, which multiply small batches, hold BLAS to one thread too.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np

CHUNK_ROWS = 512  # rows per task of the fast path (measured: 256 to 2048 are within a few %)
# Smaller batches run on the calling thread alone: on a busy machine, waiting for a helper thread
# that was preempted in the middle of its chunk costs milliseconds.
PARALLEL_ROWS = 2048
_BLAS_THREADED_ROWS = 16  # OpenBLAS runs products of fewer rows on one thread anyway


_BLAS = threading.Lock()
_blas_state: dict = {"depth": 0, "limiter": None}
_pool_state: dict = {"pool": None}
_local = threading.local()


def n_threads() -> int:
    """Worker threads of the fast path: ``$BNNMIP_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("BNNMIP_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def single_threaded_blas():
    """Hold every BLAS library numpy uses to one thread inside the block.

    Re-entrant and thread-safe: the first thread in sets the limit, the last one out restores it.
    """
    with _BLAS:
        if _blas_state["depth"] == 0:
            from threadpoolctl import ThreadpoolController

            # A fresh controller (~1 ms) also sees BLAS libraries loaded since the last call (scipy's own).
            _blas_state["limiter"] = ThreadpoolController().limit(limits=1, user_api="blas")
        _blas_state["depth"] += 1
    try:
        yield
    finally:
        with _BLAS:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def blas_limit(n_rows: int):
    """:func:`single_threaded_blas` for batches big enough for BLAS to use threads, else nothing."""
    return single_threaded_blas() if n_rows >= _BLAS_THREADED_ROWS else nullcontext()


def _pool() -> ThreadPoolExecutor:
    with _BLAS:
        if _pool_state["pool"] is None:
            workers = max(1, n_threads() - 1)
            _pool_state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bnnmip")
        return _pool_state["pool"]


def _reset_after_fork() -> None:
    """A forked child has none of the parent's threads: no pool, no lock holder, no BLAS limit to undo."""
    global _BLAS
    _BLAS = threading.Lock()
    _blas_state.update(depth=0, limiter=None)
    _pool_state.update(pool=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def chunk_rows(n_rows: int) -> int:
    """Rows per chunk of the fast path: :data:`CHUNK_ROWS`, or fewer for a batch of less than
    ``2 * threads * CHUNK_ROWS`` rows so that it still splits evenly over the threads."""
    if n_rows < PARALLEL_ROWS or n_threads() == 1:
        return max(1, min(n_rows, CHUNK_ROWS))
    return min(CHUNK_ROWS, -(-n_rows // (2 * n_threads())))


def run_chunks(work, n_rows: int) -> None:
    """Call ``work(start, stop)`` for every chunk of :func:`chunk_rows` rows, on up to :func:`n_threads` threads.

    The calling thread works too, and every thread takes the next chunk when it is free: on a busy
    machine a helper that is slow to wake up finds the chunks done, rather than being waited for.
    """
    size = chunk_rows(n_rows)
    n_chunks = -(-n_rows // size)
    if n_chunks == 1:
        work(0, n_rows)
        return
    next_chunk = itertools.count().__next__  # atomic under the GIL

    def drain() -> None:
        while (i := next_chunk()) < n_chunks:
            work(i * size, min((i + 1) * size, n_rows))

    helpers = min(n_threads(), n_chunks) - 1 if n_rows >= PARALLEL_ROWS else 0
    tasks = [_pool().submit(drain) for _ in range(helpers)]
    try:
        drain()
    finally:  # wait for the helpers that started (they write into the caller's output)
        failures = [task.exception() for task in tasks if not task.cancel()]
    for failure in failures:
        if failure is not None:
            raise failure


def buffer(slot: int, shape: tuple[int, int], dtype) -> np.ndarray:
    """A per-thread scratch array, reused across calls (no page faults on fresh memory)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    flat = buffers.get(slot)
    if flat is None or flat.nbytes < nbytes:
        flat = buffers[slot] = np.empty(max(nbytes, 1 << 16), np.uint8)
    return flat[:nbytes].view(dtype).reshape(shape)
