"""MPS (free format) and CPLEX LP writers for :class:`~bnnmip.milp.model.MilpModel`.

Names are kept (columns ``x_<pixel>``, ``z_<bit>``, ``h<l>_<unit>``; rows ``on_*`` / ``off_*``),
numbers are written with 17 significant digits so they read back bit for bit, and the objective
constant is kept (MPS: as ``-RHS`` of the objective row; LP: as a fixed column ``obj_const``).
A model without columns (every unit fixed by the bounds) gets one column fixed at 0 in MPS: HiGHS
reads an MPS file without columns as an empty model and drops its objective constant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError
from ..files import write_file

if TYPE_CHECKING:  # annotations only: model.py imports this module
    from .model import MilpModel

SUFFIXES = (".mps", ".lp")
_EMPTY = "obj_const"  # the MPS column of a model without columns


def _num(v: float) -> str:
    return f"{float(v):.17g}"


def write_model(model: MilpModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (format from the suffix: .mps or .lp); returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(f"{path}: unknown model file suffix {path.suffix!r}; use .mps or .lp")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"{path}: folder {str(path.parent)!r} does not exist")
    return write_file(path, _mps(model) if suffix == ".mps" else _lp(model))  # never through a link


def _row_kind(lo: float, hi: float) -> str:
    if lo == hi:
        return "E"
    if np.isfinite(lo) and np.isfinite(hi):
        return "R"
    return "G" if np.isfinite(lo) else ("L" if np.isfinite(hi) else "N")


def _mps(model: MilpModel) -> str:
    cols, rows = model.col_names(), model.rows_names()
    kinds = [_row_kind(lo, hi) for lo, hi in zip(model.row_lower, model.row_upper)]
    out = [f"NAME {model.name}", "OBJSENSE", "    MAX" if model.sense == "max" else "    MIN", "ROWS", " N  OBJ"]
    out += [f" {'G' if k == 'R' else k}  {name}" for k, name in zip(kinds, rows)]
    out.append("COLUMNS")
    A = model.A.tocsc()
    integer = model.integrality
    in_marker = False
    for j in range(model.num_cols):
        if integer[j] != in_marker:
            out.append(f"    MARKER  'MARKER'  '{'INTORG' if integer[j] else 'INTEND'}'")
            in_marker = bool(integer[j])
        name = cols[j]
        if model.objective[j]:
            out.append(f"    {name}  OBJ  {_num(model.objective[j])}")
        lo, hi = A.indptr[j], A.indptr[j + 1]
        out += [f"    {name}  {rows[i]}  {_num(v)}" for i, v in zip(A.indices[lo:hi].tolist(), A.data[lo:hi].tolist())]
    if in_marker:
        out.append("    MARKER  'MARKER'  'INTEND'")
    if model.num_cols == 0:
        out.append(f"    {_EMPTY}  OBJ  0")
    out.append("RHS")
    if model.objective_offset:
        out.append(f"    RHS  OBJ  {_num(-model.objective_offset)}")
    for name, k, lo, hi in zip(rows, kinds, model.row_lower, model.row_upper):
        rhs = {"E": lo, "G": lo, "R": lo, "L": hi}.get(k)
        if rhs is not None and rhs != 0:
            out.append(f"    RHS  {name}  {_num(rhs)}")
    ranged = [(name, hi - lo) for name, k, lo, hi in zip(rows, kinds, model.row_lower, model.row_upper) if k == "R"]
    if ranged:
        out.append("RANGES")
        out += [f"    RNG  {name}  {_num(r)}" for name, r in ranged]
    out.append("BOUNDS")
    for name, lo, hi, is_int in zip(cols, model.col_lower, model.col_upper, integer):
        if is_int and lo == 0 and hi == 1:
            out.append(f" BV BND  {name}")
        elif lo == hi:
            out.append(f" FX BND  {name}  {_num(lo)}")
        elif not np.isfinite(lo) and not np.isfinite(hi):
            out.append(f" FR BND  {name}")
        else:
            out.append(f" LO BND  {name}  {_num(lo)}" if np.isfinite(lo) else f" MI BND  {name}")
            out.append(f" UP BND  {name}  {_num(hi)}" if np.isfinite(hi) else f" PL BND  {name}")
    if model.num_cols == 0:
        out.append(f" FX BND  {_EMPTY}  0")
    out.append("ENDATA")
    return "\n".join(out) + "\n"


def _terms(coefs, names) -> list[str]:
    """' + 2 x_1 - 1 h1_3' pieces, several per line (LP readers limit line length)."""
    pieces = [f"{'-' if c < 0 else '+'} {_num(abs(c))} {n}" for c, n in zip(coefs, names)]
    return [" ".join(pieces[i : i + 6]) for i in range(0, len(pieces), 6)] or ["0 obj_const"]


def _lp(model: MilpModel) -> str:
    cols, rows = model.col_names(), model.rows_names()
    const = "obj_const"
    out = [f"\\ {model.name}", "Maximize" if model.sense == "max" else "Minimize"]
    nz = np.flatnonzero(model.objective)
    obj = _terms(model.objective[nz].tolist(), [cols[i] for i in nz])
    if model.objective_offset:
        obj.append(f"{'-' if model.objective_offset < 0 else '+'} {_num(abs(model.objective_offset))} {const}")
    out.append(" obj: " + obj[0])
    out += ["   " + line for line in obj[1:]]
    out.append("Subject To")
    A = model.A
    for r, name in enumerate(rows):
        lo, hi = model.row_lower[r], model.row_upper[r]
        a, b = A.indptr[r], A.indptr[r + 1]
        lines = _terms(A.data[a:b].tolist(), [cols[i] for i in A.indices[a:b].tolist()])
        for suffix, op, rhs in (("", "=", lo),) if lo == hi else (
            ("_lo" if np.isfinite(hi) else "", ">=", lo), ("_hi" if np.isfinite(lo) else "", "<=", hi)
        ):
            if np.isfinite(rhs):
                out.append(f" {name}{suffix}: " + "\n   ".join(lines) + f" {op} {_num(rhs)}")
    out.append("Bounds")
    for name, lo, hi in zip(cols, model.col_lower, model.col_upper):
        if not np.isfinite(lo) and not np.isfinite(hi):
            out.append(f" {name} free")
        else:
            lo_text, hi_text = (_num(lo) if np.isfinite(lo) else "-inf"), (_num(hi) if np.isfinite(hi) else "+inf")
            out.append(f" {lo_text} <= {name} <= {hi_text}")
    out.append(f" {const} = 1")
    general = [cols[i] for i in np.flatnonzero(model.integrality & ~((model.col_lower == 0) & (model.col_upper == 1)))]
    binary = [cols[i] for i in np.flatnonzero(model.integrality & (model.col_lower == 0) & (model.col_upper == 1))]
    for title, names in (("General", general), ("Binary", binary)):
        if names:
            out.append(title)
            out += [" " + " ".join(names[i : i + 10]) for i in range(0, len(names), 10)]
    out.append("End")
    return "\n".join(out) + "\n"
