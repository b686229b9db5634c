"""The outcome of one MILP solve, whatever the backend: :class:`MilpSolution`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..status import SolveStatus


@dataclass(frozen=True)
class MilpSolution:
    """The outcome of one solve; a failed or time-limited solve is still well-formed.

    ``status`` is a :class:`~bnnmip.status.SolveStatus`: 'optimal' (proved), 'feasible' (stopped
    with an incumbent, never reported as optimal), 'infeasible', 'time_limit' (no incumbent) or
    'error'.  ``bound`` is the best dual bound (an upper bound when maximising); ``trace`` lists
    (seconds, incumbent objective).
    """

    status: SolveStatus
    values: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    time: float
    backend: str
    message: str = ""
    trace: tuple = ()

    @classmethod
    def failure(cls, backend: str, status: SolveStatus, elapsed: float, message: str = "",
                bound: float | None = None) -> MilpSolution:
        """A solve that ended without a solution (time limit, infeasible, error)."""
        return cls(SolveStatus(status), None, None, bound, None, elapsed, backend, message)

    @classmethod
    def found(cls, backend: str, status: SolveStatus, values: np.ndarray, objective: float, bound: float | None,
              elapsed: float, message: str = "", trace: tuple = ()) -> MilpSolution:
        """A solve that ended with a solution; the gap is computed from ``objective`` and ``bound``."""
        return cls(SolveStatus(status), values, objective, bound, relative_gap(objective, bound), elapsed, backend,
                   message, trace)

    @property
    def has_solution(self) -> bool:
        return self.values is not None

    @property
    def proved_optimal(self) -> bool:
        return self.status == SolveStatus.OPTIMAL


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """``|bound - objective| / |objective|`` (None without both)."""
    if objective is None or bound is None or not np.isfinite(bound):
        return None
    return abs(bound - objective) / max(1e-10, abs(objective))
