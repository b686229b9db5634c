"""Solver backends: one module per solver, the same small interface, explicit status maps.

Each backend module provides ``build(model)`` (the native solver object) and
``solve(model, *, time_limit, threads, verbose, solver, start, on_incumbent, t0) -> MilpSolution``.
Solvers are imported lazily, so a missing one is a clear :class:`~bnnmip.SolverError`.
"""

from __future__ import annotations

import importlib

from ..errors import InvalidArgumentError, SolverError

# backend name -> (module inside bnnmip.backends, python package it needs)
BACKENDS = {"highs": ("highs", "highspy"), "scip": ("scip", "pyscipopt"), "cvxpy": ("cvxpy_backend", "cvxpy")}


def get_backend(name: str):
    """The backend module called ``name``; raises a clear error if unknown or not installed."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise InvalidArgumentError(f"backend={name!r}: expected one of {sorted(BACKENDS)}")
    module, package = BACKENDS[name]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise SolverError(
            f"backend={name!r} needs the Python package {package!r}, which is not installed "
            f"(pip install {package}): {e}"
        ) from e
    return importlib.import_module(f"{__name__}.{module}")


def available_backends() -> list[str]:
    """Names of the backends whose solver package imports."""
    out = []
    for name in BACKENDS:
        try:
            get_backend(name)
            out.append(name)
        except SolverError:
            pass
    return out
