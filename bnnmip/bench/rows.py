"""One finished job as a row (:class:`ResultRow`): its columns, its CSV form, and reading rows back.

Rows come back from places bnnmip does not control (a database someone edited, a CSV file), so
every row read is checked column by column (:func:`row_from_values`): a wrong type, a missing
value or a trace that is not JSON is a :class:`~bnnmip.errors.StoreError` naming the row, never a
traceback later in a table or a plot.  Rows of schema version 1 (no ``levels``, no ``linf``, keys
without the grid and the label) read back through :func:`row_from_v1`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import types
import typing
from dataclasses import astuple, dataclass, fields

from ..errors import StoreError
from ..version import __version__
from .jobs import Job, key_from_v1
from .worker import JobResult


@dataclass(frozen=True)
class ResultRow:
    """One finished job: what was asked (model, image, ε, grid, method, ...) and what came out.

    ``verified`` and ``linf`` are the onnxruntime re-check of an adversarial input: the label
    changed in onnxruntime, ``linf <= eps`` and the input lies in the input range.
    """

    job_key: str
    run_id: str
    model_file: str
    model_sha256: str
    dataset: str
    arch: str
    data_file: str
    image_index: int
    label: int  # true label
    pred: int  # clean prediction of the model
    eps: float
    eps_levels: float
    levels: int  # the input grid the attack used
    method: str
    backend: str | None
    target: int | None
    time_limit: float
    threads: int
    options: str
    status: str
    adv_label: int | None
    objective: float | None
    bound: float | None
    time: float | None  # the attack's own time
    wall_time: float  # the job's time on the worker, model loading included
    verified: bool
    linf: float | None  # L-infinity distance of the adversarial input from the clean one
    trace: str  # JSON [[seconds, best objective], ...]
    message: str
    error: str
    version: str
    host: str
    finished_at: str  # ISO 8601, UTC

    @classmethod
    def make(cls, job: Job, result: JobResult, run_id: str) -> ResultRow:
        return cls(
            job_key=job.key, run_id=run_id, model_file=job.model.path, model_sha256=job.model.sha256,
            dataset=job.model.dataset, arch=job.model.arch, data_file=job.model.data, image_index=job.image_index,
            label=job.label, pred=job.pred, eps=job.eps, eps_levels=job.eps_levels, levels=job.levels,
            method=job.method, backend=job.backend, target=job.target, time_limit=job.time_limit,
            threads=job.threads, options=job.options, status=result.status, adv_label=result.adv_label,
            objective=result.objective, bound=result.bound, time=result.time, wall_time=result.wall_time,
            verified=result.verified, linf=result.linf, trace=result.trace_json(), message=result.message,
            error=result.error, version=__version__, host=result.host,
            finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )

    @property
    def correct(self) -> bool:
        """Whether the model classified the clean image correctly (flip rates count only these)."""
        return self.label == self.pred

    @property
    def flipped(self) -> bool:
        return self.status == "adversarial"

    @property
    def variant(self) -> str:
        """'method' or 'method/backend'."""
        return self.method if self.backend is None else f"{self.method}/{self.backend}"

    def trace_points(self) -> list[tuple[float, float]]:
        """The anytime curve as (seconds, best objective) pairs (checked when the row was read)."""
        return [(float(t), float(f)) for t, f in json.loads(self.trace or "[]")]


def _column_types() -> list[tuple[str, type, bool]]:
    """(name, python type, nullable) of every ResultRow field."""
    hints = typing.get_type_hints(ResultRow)
    out = []
    for f in fields(ResultRow):
        hint = hints[f.name]
        args = typing.get_args(hint)
        nullable = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
        base = next(a for a in args if a is not type(None)) if nullable else hint
        out.append((f.name, base, nullable))
    return out


COLUMNS = _column_types()
COLUMN_NAMES = [name for name, _, _ in COLUMNS]
#: The columns of schema version 1 (before the grid and the distance of an adversarial input).
COLUMN_NAMES_V1 = [name for name in COLUMN_NAMES if name not in ("levels", "linf")]
_TYPE_NAMES = {int: "an integer", float: "a number", str: "text", bool: "0 or 1"}


def row_from_values(values, where: str) -> ResultRow:
    """A :class:`ResultRow` from stored values in column order, each checked; ``where`` names the source."""
    values = list(values)
    key = values[0] if values and isinstance(values[0], str) else "?"
    out = []
    for (name, base, nullable), v in zip(COLUMNS, values, strict=True):
        out.append(_checked(v, name, base, nullable, f"{where}: row {key[:80]!r}"))
    row = ResultRow(*out)
    _check_trace(row.trace, f"{where}: row {key[:80]!r}")
    return row


def row_from_v1(values, where: str) -> ResultRow:
    """A schema-1 row (columns :data:`COLUMN_NAMES_V1`) as today's row: levels from ``eps_levels / eps``,
    the key rewritten with the levels and the true label (:func:`~bnnmip.bench.jobs.key_from_v1`)."""
    old = dict(zip(COLUMN_NAMES_V1, values, strict=True))
    eps, eps_levels = old.get("eps"), old.get("eps_levels")
    try:
        levels = int(round(float(eps_levels) / float(eps)))
        old["job_key"] = key_from_v1(old["job_key"], levels, int(old["label"]))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        shown = str(old.get("job_key"))[:80]
        raise StoreError(f"{where}: row {shown!r}: not a bnnmip (schema 1) results row") from None
    return row_from_values([levels if n == "levels" else old.get(n) for n in COLUMN_NAMES], where)


def _checked(v, name: str, base: type, nullable: bool, where: str):
    if v is None or (v == "" and base is not str):
        if nullable:
            return None
        raise StoreError(f"{where}: column {name} is empty")
    if base is bool and v in (0, 1) and not isinstance(v, float):
        return bool(v)
    if base is int and isinstance(v, int) and not isinstance(v, bool):
        return v
    if base is float and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
        return float(v)
    if base is str and isinstance(v, str):
        return v
    raise StoreError(f"{where}: column {name} holds {str(v)[:40]!r}, expected {_TYPE_NAMES[base]}")


def _check_trace(trace: str, where: str) -> None:
    try:
        points = json.loads(trace or "[]")
        ok = isinstance(points, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in points)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise StoreError(f"{where}: column trace is not a JSON list of [seconds, objective] pairs")


def write_csv(rows: list[ResultRow], out: typing.TextIO) -> None:
    """Write rows as CSV (header = column names; empty cell = NULL; booleans 0/1)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    for row in rows:
        writer.writerow(["" if v is None else int(v) if isinstance(v, bool) else v for v in astuple(row)])


def read_csv(source: typing.TextIO) -> list[ResultRow]:
    """Rows back from :func:`write_csv`'s output (today's columns, or schema 1's)."""
    try:
        return _read_csv(csv.reader(source))
    except csv.Error as e:
        raise StoreError(f"csv: not a bnnmip results export ({e})") from None


def _read_csv(reader) -> list[ResultRow]:
    header = next(reader, None)
    if header not in (COLUMN_NAMES, COLUMN_NAMES_V1):
        raise StoreError("csv: the header is not that of a bnnmip results export")
    types_of = {name: (base, nullable) for name, base, nullable in COLUMNS}
    rows = []
    for n, line in enumerate(reader, start=2):
        if len(line) != len(header):
            raise StoreError(f"csv: line {n} has {len(line)} cells, the header {len(header)}")
        values = [_parse_cell(cell, *types_of[name]) for name, cell in zip(header, line)]
        rows.append(row_from_values(values, f"csv line {n}") if header == COLUMN_NAMES
                    else row_from_v1(values, f"csv line {n}"))
    return rows


def _parse_cell(cell: str, base: type, nullable: bool):
    if cell == "" and (nullable or base is not str):
        return None
    try:
        if base is bool:
            return int(cell)
        return base(cell)
    except ValueError:
        return cell  # reported by the row check, naming the column
