"""Solver backends: one module per solver, the same interface, explicit status maps.

Each backend is a :class:`~bnnmip.backends.base.Backend` with declared
:class:`~bnnmip.milp.backend.Capabilities`; importing this package registers them, so
``MilpModel.solve(backend=name)`` finds them.  Solver packages are imported lazily: a missing one
is a clear :class:`~bnnmip.SolverError` when used.  A new backend is one module and one entry of
:data:`BACKENDS`.
"""

from __future__ import annotations

from ..errors import SolverError
from ..milp.backend import Capabilities, SolveOptions, backend_names, get_backend, register_backend
from .base import Backend
from .cpsat import CpSatBackend
from .cvxpy_backend import CvxpyBackend
from .highs import HighsBackend
from .scip import ScipBackend
from .session import RebuildSession, open_session

BACKENDS: dict[str, Backend] = {b.name: b for b in (HighsBackend(), ScipBackend(), CvxpyBackend(), CpSatBackend())}
for _backend in BACKENDS.values():
    register_backend(_backend)


def require_backend(name: str) -> Backend:
    """The backend called ``name``, with its solver package installed (else a clear error)."""
    backend = get_backend(name)
    backend.require()
    return backend


def available_backends() -> list[str]:
    """Names of the backends whose solver package is installed."""
    out = []
    for name in backend_names():
        try:
            require_backend(name)
            out.append(name)
        except SolverError:
            pass
    return out


__all__ = ["BACKENDS", "Backend", "Capabilities", "RebuildSession", "SolveOptions", "available_backends",
           "backend_names", "get_backend", "open_session", "register_backend", "require_backend"]
