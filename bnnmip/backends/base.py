"""The template every solver backend fills in: :class:`Backend`.

:meth:`Backend.solve` owns the sequence and the time accounting, once for all backends: check the
options against the :class:`~bnnmip.milp.backend.Capabilities`, start the clock, build the native
model, hand the solver only the time that is left, run it, and read the outcome into a
:class:`~bnnmip.milp.solution.MilpSolution`.  A backend implements :meth:`Backend._build`,
:meth:`Backend._configure` and :meth:`Backend._run` (and a session class if it can update models
in place); the solver package is imported lazily, so a missing one is a clear
:class:`~bnnmip.SolverError` at use, not an ImportError at import.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import InvalidArgumentError, SolverError
from ..milp.backend import Capabilities, Session, SolveOptions
from ..milp.model import MilpModel
from ..milp.solution import MilpSolution
from ..status import SolveStatus
from ..timing import Deadline, check_time_limit


class Backend(ABC):
    """A solver behind the common interface (see the module docstring)."""

    name: ClassVar[str]
    title: ClassVar[str]  # how people write the solver's name: 'HiGHS'
    package: ClassVar[str]  # the Python package the solver needs
    capabilities: ClassVar[Capabilities]

    # ------------------------------------------------------------------ availability and checks
    def available(self) -> bool:
        """Whether the solver package imports."""
        try:
            importlib.import_module(self.package)
        except ImportError:
            return False
        return True

    def require(self) -> None:
        if not self.available():
            raise SolverError(f"backend={self.name!r} needs the Python package {self.package!r}, which is not "
                              f"installed (pip install {self.package})")

    def check(self, model: MilpModel, options: SolveOptions) -> None:
        """Refuse what this backend cannot honour, naming the option (never drop it in silence)."""
        caps, name = self.capabilities, self.name
        refusals = (
            (options.threads not in (None, 1) and not caps.threads, "threads", "runs on one thread"),
            (options.start is not None and not caps.warm_start, "start", "takes no warm start"),
            (options.on_incumbent is not None and not caps.incumbent_callback, "on_incumbent",
             "reports no incumbents while it solves"),
            (options.on_progress is not None and not caps.progress, "on_progress",
             "reports no progress while it solves"),
            (options.solver is not None and not caps.solver_choice, "solver", "has no choice of solver"),
            (not model.integrality.any() and model.num_cols and not caps.lp, "model", "does not solve LPs"),
        )
        for refused, option, why in refusals:
            if refused:
                raise InvalidArgumentError(f"{option}: backend {name!r} {why} (capabilities: {caps.names()})")
        if caps.integer_only and not model.integral_constraints():
            raise InvalidArgumentError(f"backend={name!r} needs integer columns, coefficients and bounds; this model "
                                       "has real ones (real first-layer weights, or inputs off the grid: give levels)")
        if options.start is not None and np.shape(options.start) != (model.num_cols,):
            raise InvalidArgumentError(f"start: expected {model.num_cols} values, got shape {np.shape(options.start)}")

    # ------------------------------------------------------------------ the template
    def solve(self, model: MilpModel, options: SolveOptions) -> MilpSolution:
        """Solve ``model``: the sequence and the time accounting every backend shares."""
        deadline = Deadline.start(options.time_limit)  # counts everything from here
        check_time_limit(options.time_limit)
        self.require()
        self.check(model, options)
        if model.num_cols == 0:  # everything fixed: the objective is a constant
            offset = model.objective_offset
            return MilpSolution.found(self.name, SolveStatus.OPTIMAL, np.zeros(0), offset, offset, 0.0)
        native = self._build(model, options, deadline)
        if deadline.expired():
            return MilpSolution.failure(self.name, SolveStatus.TIME_LIMIT, deadline.elapsed(),
                                        "time limit reached while building the model")
        self._configure(native, deadline, options)
        return self._run(native, model, deadline, options)

    def native(self, model: MilpModel) -> Any:
        """The solver's own model object holding ``model`` (for users who go on in the solver's API)."""
        self.require()
        return self._build(model, SolveOptions(), Deadline.start(None))

    def open_session(self, model: MilpModel, *, threads: int | None = None, mip_gap: float | None = None) -> Session:
        """A :class:`~bnnmip.milp.backend.Session` that updates the native model in place."""
        if not self.capabilities.in_place_session:
            raise InvalidArgumentError(f"backend={self.name!r}: no in-place session; use reuse=False")
        self.require()
        self.check(model, SolveOptions(threads=threads))
        return self._session(model, threads, mip_gap)

    # ------------------------------------------------------------------ what a backend fills in
    @abstractmethod
    def _build(self, model: MilpModel, options: SolveOptions, deadline: Deadline) -> Any:
        """The native model (its build time counts against ``deadline``)."""

    @abstractmethod
    def _configure(self, native: Any, deadline: Deadline, options: SolveOptions) -> None:
        """Set the native model's limits from what is left of ``deadline``, gap, threads and verbosity."""

    @abstractmethod
    def _run(self, native: Any, model: MilpModel, deadline: Deadline, options: SolveOptions) -> MilpSolution:
        """Solve and read the outcome (statuses through the backend's explicit status map)."""

    def _session(self, model: MilpModel, threads: int | None, mip_gap: float | None) -> Session:
        raise NotImplementedError


class IncumbentTrace:
    """The anytime trace of one solve, the user's incumbent callback with its stop request, and the
    progress callback (:meth:`progress`: primal and dual bounds as the solver reports them)."""

    def __init__(self, t0: float, on_incumbent=None, on_progress=None):
        self.t0, self.on_incumbent, self.on_progress = t0, on_incumbent, on_progress
        self.points: list[tuple[float, float]] = []
        self.stop = False

    def record(self, objective: float, values=None) -> bool:
        """Record an incumbent; True if the callback asks to stop (``values`` is a callable or array)."""
        self.points.append((time.perf_counter() - self.t0, float(objective)))
        if self.on_incumbent is not None:
            vector = values() if callable(values) else values
            if self.on_incumbent(np.asarray(vector, np.float64), float(objective)):
                self.stop = True
        return self.stop

    def progress(self, primal: float, dual: float) -> None:
        """Pass the solver's primal and dual bounds on (infinite ones, not known yet, as None)."""
        if self.on_progress is not None:
            self.on_progress(primal if np.isfinite(primal) else None, dual if np.isfinite(dual) else None)
