r"""The solver-agnostic mixed-integer linear program every backend reads.

.. math::  \max / \min\ c^\top v + c_0 \quad\text{s.t.}\quad r_{lo} \le A v \le r_{hi},\ \ v_{lo} \le v \le v_{hi},
           \ \ v_i \in \mathbb{Z}\ (i \in I)

``A`` is one CSR matrix; the :class:`ColumnMap` says which pixel or which unit of which stage
each column stands for (the inverse map from a solution back to the network).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidArgumentError
from .backend import SolveOptions, get_backend
from .solution import MilpSolution
from .writer import write_model


@dataclass(frozen=True)
class ColumnMap:
    """What each column is: ``stage[i] == -1`` for input pixel ``index[i]``, else unit ``index[i]``
    of ``net.threshold_stages[stage[i]]`` (a binary with ``h = 2 b - 1``)."""

    stage: np.ndarray  # int32
    index: np.ndarray  # int32
    stage_names: tuple[str, ...] = ()

    def columns_of(self, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """(units, columns) of one stage (-1: the input pixels)."""
        cols = np.flatnonzero(self.stage == stage)
        return self.index[cols], cols

    def names(self) -> list[str]:
        """``x_<pixel>`` and ``<stage name>_<unit>`` (``s<k>_<unit>`` for a stage without a name)."""
        n_stages = int(self.stage.max(initial=-1)) + 1
        prefix = ["x"] + [self.stage_names[k] if k < len(self.stage_names) else f"s{k}" for k in range(n_stages)]
        return [f"{prefix[s + 1]}_{i}" for s, i in zip(self.stage.tolist(), self.index.tolist())]


@dataclass(frozen=True, eq=False)
class RowIndicators:
    """The logic behind big-M rows: row ``r`` is meant to hold only when column ``col[r]`` (a binary)
    equals ``value[r]``; ``col[r] == -1`` marks an ordinary row.

    The rows themselves are complete linear (big-M) constraints that every MILP solver reads; a
    backend with indicator constraints (CP-SAT's ``OnlyEnforceIf``) may instead drop the binary's
    big-M coefficient and enforce the rest of the row only when the binary takes ``value[r]``:
    both say the same on every 0/1 value of the binary.
    """

    col: np.ndarray  # int64 per row
    value: np.ndarray  # int8 per row, 0 or 1

    def enforced_rows(self) -> np.ndarray:
        return np.flatnonzero(self.col >= 0)


@dataclass(frozen=True, eq=False)
class MilpModel:
    """A MILP as arrays: columns, one CSR constraint matrix with row bounds, a linear objective.

    Build attack models with :func:`bnnmip.attack_milp`; solve with :meth:`solve`, hand to a
    solver natively with :meth:`to_highs` / :meth:`to_scip` / :meth:`to_cvxpy`, or write an
    ``.mps`` / ``.lp`` file with :meth:`write`.
    """

    col_lower: np.ndarray
    col_upper: np.ndarray
    integrality: np.ndarray  # bool: integer column
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    objective: np.ndarray
    objective_offset: float = 0.0
    sense: str = "max"
    columns: ColumnMap | None = None
    row_names: list[str] | None = None
    name: str = "bnnmip"
    info: dict = field(default_factory=dict, compare=False)
    indicators: RowIndicators | None = None

    def __post_init__(self):
        n, m = len(self.col_lower), len(self.row_lower)
        if self.A.shape != (m, n) or len(self.col_upper) != n or len(self.objective) != n:
            raise InvalidArgumentError(f"MilpModel: inconsistent sizes (A {self.A.shape}, {m} rows, {n} columns)")
        if self.indicators is not None and (len(self.indicators.col) != m or len(self.indicators.value) != m):
            raise InvalidArgumentError(f"MilpModel: indicators for {len(self.indicators.col)} rows, the model has {m}")
        if self.sense not in ("max", "min"):
            raise InvalidArgumentError(f"sense={self.sense!r}: expected 'max' or 'min'")

    # ------------------------------------------------------------------ size
    @property
    def num_cols(self) -> int:
        return len(self.col_lower)

    @property
    def num_rows(self) -> int:
        return len(self.row_lower)

    @property
    def num_integer(self) -> int:
        return int(np.count_nonzero(self.integrality))

    @property
    def num_binary(self) -> int:
        return int(np.count_nonzero(self.integrality & (self.col_lower == 0) & (self.col_upper == 1)))

    @property
    def nnz(self) -> int:
        return int(self.A.nnz)

    def col_names(self) -> list[str]:
        return self.columns.names() if self.columns is not None else [f"c{i}" for i in range(self.num_cols)]

    def rows_names(self) -> list[str]:
        return self.row_names if self.row_names is not None else [f"r{i}" for i in range(self.num_rows)]

    def __repr__(self) -> str:
        return (
            f"MilpModel({self.name!r}: {self.sense} over {self.num_cols} columns "
            f"({self.num_binary} binary, {self.num_integer - self.num_binary} other integer), "
            f"{self.num_rows} rows, {self.nnz} nonzeros)"
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, values: np.ndarray) -> float:
        """The objective at ``values``."""
        return float(self.objective @ values + self.objective_offset)

    def violation(self, values: np.ndarray) -> float:
        """The largest violation of a bound, row or integrality at ``values`` (0 when feasible)."""
        v = np.asarray(values, np.float64)
        act = self.A @ v
        parts = [
            np.maximum(self.col_lower - v, 0), np.maximum(v - self.col_upper, 0),
            np.maximum(self.row_lower - act, 0), np.maximum(act - self.row_upper, 0),
            np.abs(v - np.rint(v)) * self.integrality,
        ]
        return float(max((p.max(initial=0.0) for p in parts), default=0.0))

    def relaxed(self) -> MilpModel:
        """The LP relaxation: the same model with every column continuous."""
        return replace(self, integrality=np.zeros(self.num_cols, bool), info={})

    def integral_constraints(self) -> bool:
        """Whether every column is integer and every coefficient and finite bound an integer (what CP-SAT
        needs; the objective may be real)."""
        parts = (self.A.data, self.col_lower, self.col_upper, self.row_lower, self.row_upper)
        return bool(self.integrality.all()) and all(_integers(np.asarray(p, np.float64)) for p in parts)

    # ------------------------------------------------------------------ solving (delegates)
    def solve(
        self,
        backend: str = "highs",
        time_limit: float | None = None,
        threads: int | None = None,
        verbose: bool = False,
        solver: str | None = None,
        start: np.ndarray | None = None,
        on_incumbent=None,
        mip_gap: float | None = None,
        on_progress=None,
    ) -> MilpSolution:
        """Solve with ``backend`` (see :func:`bnnmip.backends.backend_names`; ``solver`` picks CVXPY's solver).

        ``start`` is a full column vector used as a warm start; ``on_incumbent(values, objective)``
        is called on every improving solution and may return True to stop the solve;
        ``on_progress(incumbent, bound)`` often while the solver works (either may be None); ``mip_gap``
        (default: closed, 1e-9) is the relative gap at which the solver may stop and call the
        solution optimal.  A backend that cannot honour an option (its
        :class:`~bnnmip.milp.backend.Capabilities` say which) raises :class:`~bnnmip.InvalidArgumentError`.
        """
        options = SolveOptions(time_limit, threads, verbose, solver, start, on_incumbent, mip_gap, on_progress)
        return get_backend(backend).solve(self, options)

    def to_highs(self):
        """A ``highspy.Highs`` holding this model (passed in one ``passModel`` call)."""
        return get_backend("highs").native(self)

    def to_scip(self):
        """A ``pyscipopt.Model`` holding this model; variable and constraint names are :meth:`col_names`
        and :meth:`rows_names` (SCIP's ``getVars()`` lists binaries first)."""
        return get_backend("scip").native(self)

    def to_cvxpy(self):
        """``(cvxpy.Problem, variable)``: one vector variable over all columns, in column order."""
        return get_backend("cvxpy").native(self)

    def write(self, path: str | Path) -> Path:
        """Write the model as free MPS (``.mps``) or CPLEX LP (``.lp``), keeping names."""
        return write_model(self, path)


def _integers(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(np.all(finite == np.rint(finite)))
