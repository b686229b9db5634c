"""Solving one model many times with small changes (IProp's layer-local subproblems, LP bounds).

``open_session(model, backend, reuse=True)`` keeps the backend's native model and applies each
change in place (column bounds, objective, row bounds, existing matrix entries); ``reuse=False``
applies the same changes to a copy of the arrays and rebuilds the model for every solve (any
backend), which is what ``benchmarks/iprop_reuse.py`` measures against.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import InvalidArgumentError
from ..milp.backend import Session, get_backend
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution


class RebuildSession:
    """The session interface over plain arrays: every solve builds the backend model afresh."""

    def __init__(self, model: MilpModel, backend: str, threads: int | None = None, mip_gap: float | None = None):
        self.model, self.backend, self.threads, self.mip_gap = model, backend, threads, mip_gap
        self.col_lower, self.col_upper = model.col_lower.copy(), model.col_upper.copy()
        self.row_lower, self.row_upper = model.row_lower.copy(), model.row_upper.copy()
        self.objective = model.objective.copy()
        self.A = model.A.copy()
        self.A.sort_indices()

    def set_col_bounds(self, cols, lower, upper) -> None:
        self.col_lower[cols], self.col_upper[cols] = lower, upper

    def set_objective(self, cols, costs) -> None:
        self.objective[cols] = costs

    def set_row_bounds(self, rows, lower, upper) -> None:
        self.row_lower[rows], self.row_upper[rows] = lower, upper

    def set_entries(self, rows, cols, values) -> None:
        rows, cols = np.atleast_1d(rows), np.atleast_1d(cols)
        rows = np.broadcast_to(rows, cols.shape)
        starts, ends = self.A.indptr[rows], self.A.indptr[rows + 1]
        positions = np.array([s + np.searchsorted(self.A.indices[s:e], c) for s, e, c in zip(starts, ends, cols)],
                             dtype=np.int64)
        if len(positions) and np.any(self.A.indices[np.minimum(positions, len(self.A.indices) - 1)] != cols):
            raise InvalidArgumentError("set_entries: some (row, column) pairs are not entries of the matrix")
        self.A.data[positions] = values

    def solve(self, time_limit: float | None = None, start=None) -> MilpSolution:
        model = replace(
            self.model, col_lower=self.col_lower.copy(), col_upper=self.col_upper.copy(),
            row_lower=self.row_lower.copy(), row_upper=self.row_upper.copy(), objective=self.objective.copy(),
            A=self.A.copy(), info={},
        )
        start = start if get_backend(self.backend).capabilities.warm_start else None
        return model.solve(self.backend, time_limit=time_limit, threads=self.threads, start=start,
                           mip_gap=self.mip_gap)


def open_session(model: MilpModel, backend: str = "highs", *, reuse: bool = True, threads: int | None = None,
                 mip_gap: float | None = None) -> Session:
    """A session solving ``model`` repeatedly; see the module docstring."""
    impl = get_backend(backend)
    if not reuse:
        return RebuildSession(model, backend, threads, mip_gap)
    return impl.open_session(model, threads=threads, mip_gap=mip_gap)
