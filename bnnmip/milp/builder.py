"""Assembling a :class:`~bnnmip.milp.model.MilpModel` from array blocks: :class:`ModelBuilder`.

Columns and rows are appended in blocks (numpy arrays in, CSR pieces kept), never one Python call
per coefficient; :meth:`ModelBuilder.model` concatenates them into one CSR matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .model import ColumnMap, MilpModel, RowIndicators


@dataclass(frozen=True, eq=False)
class UnitRows:
    r"""The big-M rows of a block of units, over input columns ``in_cols``: unit ``j`` is on iff
    ``coef[j] @ v >= theta[j] + margin`` and off iff ``coef[j] @ v <= theta[j] - delta``, with
    ``L[j] <= coef[j] @ v <= U[j]`` over the inputs' bounds."""

    coef: np.ndarray  # (m, n_inputs)
    in_cols: np.ndarray  # (n_inputs,) columns of the model the inputs are
    L: np.ndarray
    U: np.ndarray
    theta: np.ndarray
    delta: float
    margin: float = 0.0


class ModelBuilder:
    """Accumulates columns and rows, stage by stage, as CSR pieces (rows are only ever appended).

    Unit rows are laid out directly in CSR order (their columns are sorted: inputs first, then
    the unit's own binary, which is always added later), so :meth:`model` only concatenates.
    """

    def __init__(self):
        self.lower, self.upper, self.integer = [], [], []
        self.col_stage, self.col_index = [], []
        self.counts, self.indices, self.values = [], [], []  # per row block: nonzeros per row, CSR arrays
        self.row_lower, self.row_upper, self.row_names = [], [], []
        self.ind_col, self.ind_value = [], []  # per row block: the enforcing binary (-1: none) and its value
        self.n_cols = self.n_rows = 0

    def add_columns(self, lower, upper, integer: bool, stage: int, index: np.ndarray) -> np.ndarray:
        n = len(index)
        self.lower.append(np.asarray(lower, np.float64))
        self.upper.append(np.asarray(upper, np.float64))
        self.integer.append(np.full(n, integer))
        self.col_stage.append(np.full(n, stage, np.int32))
        self.col_index.append(np.asarray(index, np.int32))
        cols = np.arange(self.n_cols, self.n_cols + n)
        self.n_cols += n
        return cols

    def add_unit_rows(self, name: str, units: np.ndarray, rows: UnitRows, unit_cols: np.ndarray) -> None:
        """The two big-M rows of each free unit: ``rows.coef`` (m_f, p) over ``rows.in_cols``.

        Row ``on_j``: ``coef_j · v + (L_j - theta_j - margin) b_j >= L_j``; row ``off_j``:
        ``coef_j · v - (U_j - theta_j + delta) b_j <= theta_j - delta`` (the unit's entry is kept
        even when zero, so sessions can change it).
        """
        m = len(units)
        if m == 0:
            return
        coef, L, U, theta, delta, margin = rows.coef, rows.L, rows.U, rows.theta, rows.delta, rows.margin
        coef = np.asarray(coef, np.float64)
        in_cols, unit_cols = np.asarray(rows.in_cols, np.int64), np.asarray(unit_cols, np.int64)
        order = np.argsort(in_cols, kind="stable")
        if np.any(order != np.arange(len(order))):
            in_cols, coef = in_cols[order], coef[:, order]
        if len(in_cols) and in_cols[-1] >= unit_cols.min():
            raise AssertionError("add_unit_rows: a unit's own column must come after its inputs")
        keep = np.ones((m, coef.shape[1] + 1), bool)
        keep[:, :-1] = coef != 0
        cols = np.empty(keep.shape, np.int64)
        cols[:, :-1], cols[:, -1] = in_cols, unit_cols
        indices, counts = cols[keep], keep.sum(axis=1)
        for last in (L - theta - margin, -(U - theta + delta)):
            vals = np.empty(keep.shape)
            vals[:, :-1], vals[:, -1] = coef, last
            self._append(counts, indices, vals[keep])
        inf = np.full(m, np.inf)
        self.row_lower += [np.asarray(L, np.float64), -inf]
        self.row_upper += [inf, np.asarray(theta - delta, np.float64)]
        self.row_names += [f"on_{name}_{j}" for j in units] + [f"off_{name}_{j}" for j in units]
        self._indicate(unit_cols, 1)  # on_j holds when b_j = 1
        self._indicate(unit_cols, 0)  # off_j holds when b_j = 0
        self.n_rows += 2 * m

    def add_indicator_rows(self, rows, cols, values, lower, upper, name: str, enforce_col: np.ndarray,
                           enforce_value: int) -> np.ndarray:
        """:meth:`add_block` rows that are big-M forms of "row i holds when column ``enforce_col[i]`` equals
        ``enforce_value``" (see :class:`~bnnmip.milp.model.RowIndicators`)."""
        out = self.add_block(rows, cols, values, lower, upper, name)
        self.ind_col[-1] = np.asarray(enforce_col, np.int64)
        self.ind_value[-1] = np.full(len(out), enforce_value, np.int8)
        return out

    def _indicate(self, cols, value: int) -> None:
        self.ind_col.append(np.asarray(cols, np.int64))
        self.ind_value.append(np.full(len(cols), value, np.int8))

    def _append(self, counts, indices, values) -> None:
        self.counts.append(np.asarray(counts, np.int64))
        self.indices.append(np.asarray(indices, np.int64))
        self.values.append(np.asarray(values, np.float64))

    def _append_coo(self, n: int, rows, cols, values) -> None:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        block = sp.csr_matrix((np.asarray(values, np.float64), (rows, cols)),
                              shape=(n, max(self.n_cols, int(cols.max(initial=-1)) + 1)))
        block.sum_duplicates()
        self._append(np.diff(block.indptr), block.indices, block.data)

    def add_block(self, rows, cols, values, lower, upper, name: str) -> np.ndarray:
        """Rows from COO entries (``rows`` numbered from 0 within the block); returns their indices."""
        n = len(lower)
        self._append_coo(n, rows, cols, values)
        self.row_lower.append(np.asarray(lower, np.float64))
        self.row_upper.append(np.asarray(upper, np.float64))
        self.row_names += [f"{name}_{i}" for i in range(n)]
        self._indicate(np.full(n, -1), 0)
        self.n_rows += n
        return np.arange(self.n_rows - n, self.n_rows)

    def add_row(self, cols, values, lower: float, upper: float, name: str) -> int:
        """One extra row; returns its index."""
        self._append_coo(1, np.zeros(len(cols), np.int64), cols, values)
        self.row_lower.append(np.array([lower], np.float64))
        self.row_upper.append(np.array([upper], np.float64))
        self.row_names.append(name)
        self._indicate(np.full(1, -1), 0)
        self.n_rows += 1
        return self.n_rows - 1

    def model(self, objective, offset, stage_names, name, sense: str = "max", model_type=MilpModel,
              **extra) -> MilpModel:
        """The model of everything added (``model_type`` a :class:`MilpModel` subclass taking ``extra``)."""
        def cat(parts, dtype=np.float64):
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        index = np.int32 if max(self.n_cols, 1) < 2**31 - 1 else np.int64
        indptr = np.zeros(self.n_rows + 1, np.int64)
        np.cumsum(cat(self.counts, np.int64), out=indptr[1:])
        A = sp.csr_matrix((cat(self.values), cat(self.indices, index), indptr.astype(index)),
                          shape=(self.n_rows, self.n_cols))
        return model_type(
            col_lower=cat(self.lower), col_upper=cat(self.upper), integrality=cat(self.integer, bool), A=A,
            row_lower=cat(self.row_lower), row_upper=cat(self.row_upper), objective=objective,
            objective_offset=float(offset), sense=sense,
            columns=ColumnMap(cat(self.col_stage, np.int32), cat(self.col_index, np.int32), stage_names),
            row_names=self.row_names, name=name,
            indicators=RowIndicators(cat(self.ind_col, np.int64), cat(self.ind_value, np.int8)), **extra,
        )


