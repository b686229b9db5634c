"""Every status vocabulary of bnnmip, as ``str`` enums.

Members compare equal to their plain strings (``SolveStatus.OPTIMAL == "optimal"``) and format
as them, so results stored in SQLite, JSON or CSV keep reading back as they always did.
"""

from __future__ import annotations

from enum import Enum


class _StrEnum(str, Enum):
    """A ``str`` enum whose ``str()`` and ``format()`` are its value (not ``Class.MEMBER``)."""

    __str__ = str.__str__
    __format__ = str.__format__


class SolveStatus(_StrEnum):
    """The outcome of one MILP solve.

    ``FEASIBLE``: stopped with an incumbent before proving it optimal (never reported as optimal);
    ``TIME_LIMIT``: stopped without an incumbent.
    """

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"
    ERROR = "error"


class Verdict(_StrEnum):
    """The verdict of an attack or verification on one input.

    ``ADVERSARIAL``: an input in the box that changes the prediction, re-checked by onnxruntime;
    ``ROBUST``: a complete proof that none exists; ``UNKNOWN``: neither within the budget.
    """

    ADVERSARIAL = "adversarial"
    ROBUST = "robust"
    UNKNOWN = "unknown"


JOB_ERROR = "error"
"""The status of a benchmark job that raised (stored beside the :class:`Verdict` values)."""


class SearchStatus(_StrEnum):
    """The outcome of a minimal-radius search: the radius is known, no radius flips, or only bounds."""

    EXACT = "exact"
    ROBUST = "robust"
    BOUNDS = "bounds"
