"""The fast path's machinery: a small thread pool, BLAS held to one thread, per-thread scratch buffers.

The fast forward pass (:meth:`bnnmip.network.BNN.logits`) splits a batch of more than
:data:`PARALLEL_ROWS` rows into row chunks run on a small thread pool (numpy releases the GIL in
BLAS and ufunc loops), with BLAS itself held to one thread: a multi-threaded OpenBLAS on a busy
machine spends milliseconds waking its threads for every small product.  The attacks, which
multiply small batches, hold BLAS to one thread too.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_ROWS = 512  # rows per task of the fast path (measured: 256 to 2048 are within a few %)
# Smaller batches run on the calling thread alone: on a busy machine, waiting for a helper thread
# that was preempted in the middle of its chunk costs milliseconds.
PARALLEL_ROWS = 2048


_BLAS = threading.Lock()
_blas_state: dict = {"depth": 0, "saved": [], "libraries": [], "modules": -1}
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


def _blas_libraries() -> list[tuple[Callable[[], int], Callable[[int], object]]]:
    """(get, set) thread-count functions of every BLAS library loaded in this process.

    Scanning the loaded libraries (threadpoolctl) costs about a millisecond, so a scan is kept
    until a module is imported (which may load another BLAS, such as scipy's own).  OpenBLAS is
    driven through its own C functions (well under a microsecond a call, from any thread); other
    libraries through threadpoolctl.
    """
    modules = len(sys.modules)
    if _blas_state["modules"] != modules:
        from threadpoolctl import ThreadpoolController  # third-party; scanned only when needed

        libraries = []
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            symbol = getattr(lib, "_get_symbol", None)
            raw = (None, None)
            if lib.internal_api == "openblas" and symbol is not None and lib.threading_layer != "openmp":
                raw = (symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads"))
            libraries.append(raw if None not in raw else (lib.get_num_threads, lib.set_num_threads))
        _blas_state.update(libraries=libraries, modules=modules)
    return _blas_state["libraries"]


class _SingleThreadedBlas:
    """The context manager of :func:`single_threaded_blas` (a class: entering costs about a microsecond)."""

    def __enter__(self) -> None:
        with _BLAS:
            if _blas_state["depth"] == 0:
                saved = []
                for get, set_ in _blas_libraries():
                    threads = get()
                    if threads != 1:
                        set_(1)
                        saved.append((set_, threads))
                _blas_state["saved"] = saved
            _blas_state["depth"] += 1

    def __exit__(self, *exc) -> None:
        with _BLAS:
            _blas_state["depth"] -= 1
            if _blas_state["depth"] == 0:
                for set_, threads in _blas_state["saved"]:
                    set_(threads)
                _blas_state["saved"] = []


_SINGLE_THREADED_BLAS = _SingleThreadedBlas()


def single_threaded_blas() -> _SingleThreadedBlas:
    """Hold every BLAS library numpy uses to one thread inside the ``with`` block.

    Re-entrant and thread-safe: the first thread in sets the limit, the last one out restores it.
    """
    return _SINGLE_THREADED_BLAS


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
    _blas_state.update(depth=0, saved=[])
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
    if n_rows <= CHUNK_ROWS:
        work(0, n_rows)
        return
    size = chunk_rows(n_rows)
    n_chunks = -(-n_rows // size)
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
