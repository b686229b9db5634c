"""The declared solver-backend interface and its registry.

:class:`~bnnmip.milp.model.MilpModel` solves through whatever backend is registered under a name;
the implementations live in :mod:`bnnmip.backends` (which registers them when bnnmip is imported),
so this layer never imports a solver.  A backend states what it can do in :class:`Capabilities`;
an option it cannot honour is refused with a clear error, never dropped in silence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError
from ..validate import check_threads

if TYPE_CHECKING:  # annotations only: model.py imports this module
    from .model import MilpModel
    from .solution import MilpSolution


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; callers check a flag before asking (or get a :class:`BnnmipError`)."""

    warm_start: bool = False  # takes a start vector (``start=``)
    incumbent_callback: bool = False  # calls ``on_incumbent(values, objective)`` on each improvement
    progress: bool = False  # calls ``on_progress(incumbent, bound)`` while it solves
    in_place_session: bool = False  # ``open_session(reuse=True)`` updates its native model in place
    threads: bool = False  # honours ``threads=`` > 1
    lp: bool = True  # solves models without integer columns (LP bounds, IProp's input LP)
    integer_only: bool = False  # needs integer coefficients, bounds and objective (CP-SAT)
    solver_choice: bool = False  # ``solver=`` picks an underlying solver (CVXPY)

    def names(self) -> list[str]:
        """The flags that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class SolveOptions:
    """Everything a solve may be asked, besides the model itself.

    ``time_limit`` counts from the call (model building included); ``mip_gap`` (default: closed,
    1e-9) is the relative gap at which a solver may call its incumbent optimal; ``on_progress(incumbent,
    bound)`` is called often while the solver works (either may be None: not known yet).
    """

    time_limit: float | None = None
    threads: int | None = None
    verbose: bool = False
    solver: str | None = None
    start: np.ndarray | None = None
    on_incumbent: Callable[[np.ndarray, float], Any] | None = None
    mip_gap: float | None = None
    on_progress: Callable[[float | None, float | None], Any] | None = None

    def __post_init__(self):
        check_threads(self.threads)


class Session(Protocol):
    """One model solved many times with small changes in between (IProp, LP bound tightening)."""

    def set_col_bounds(self, cols, lower, upper) -> None: ...
    def set_objective(self, cols, costs) -> None: ...
    def set_row_bounds(self, rows, lower, upper) -> None: ...
    def set_entries(self, rows, cols, values) -> None: ...
    def solve(self, time_limit: float | None = None, start=None) -> MilpSolution: ...


class SolverBackend(Protocol):
    """What :mod:`bnnmip.backends` registers: see :class:`bnnmip.backends.base.Backend`."""

    name: str
    title: str  # how people write the solver's name: 'HiGHS'
    capabilities: Capabilities

    def require(self) -> None: ...  # a SolverError naming the package when the solver is not installed
    def solve(self, model: MilpModel, options: SolveOptions) -> MilpSolution: ...
    def native(self, model: MilpModel) -> Any: ...
    def open_session(self, model: MilpModel, *, threads: int | None = None,
                     mip_gap: float | None = None) -> Session: ...


_REGISTRY: dict[str, SolverBackend] = {}


def register_backend(backend: SolverBackend) -> None:
    """Make ``backend`` available under ``backend.name`` (a new backend is one call here)."""
    _REGISTRY[backend.name] = backend


def backend_names() -> tuple[str, ...]:
    """Every registered backend, installed or not."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> SolverBackend:
    """The backend registered as ``name``; an :class:`InvalidArgumentError` for an unknown name."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise InvalidArgumentError(f"backend={name!r}: expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
