"""The results store: one SQLite row per finished job, written by the coordinating process only.

Resumability rests on three rules:

* the table's primary key is :attr:`Job.key` (UNIQUE), so a job can be recorded at most once;
* a row is INSERTed only when its job has finished, each in its own transaction (WAL journal,
  ``synchronous=FULL``): a process killed at any moment leaves every finished job recorded and no
  half-written row;
* a run skips every job whose key is already in the table, so rerunning the same command runs
  exactly the jobs that have no row yet.

The columns are the fields of :class:`ResultRow`; ``runs`` records each invocation (config text,
host, version, workers) and ``meta`` the schema version.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sqlite3
import types
import typing
import uuid
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from ..errors import InvalidArgumentError
from ..version import __version__
from .jobs import Job
from .worker import JobResult, host_name

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class ResultRow:
    """One finished job: what was asked (model, image, ε, method, ...) and what came out."""

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
            label=job.label, pred=job.pred, eps=job.eps, eps_levels=job.eps_levels, method=job.method,
            backend=job.backend, target=job.target, time_limit=job.time_limit, threads=job.threads,
            options=job.options, status=result.status, adv_label=result.adv_label, objective=result.objective,
            bound=result.bound, time=result.time, wall_time=result.wall_time, verified=result.verified,
            trace=result.trace_json(), message=result.message, error=result.error, version=__version__,
            host=result.host, finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
        """The anytime curve as (seconds, best objective) pairs."""
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
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT", bool: "INTEGER"}


def _create_sql() -> str:
    cols = []
    for name, base, nullable in COLUMNS:
        spec = f"{name} {_SQL_TYPES[base]}"
        spec += " PRIMARY KEY" if name == "job_key" else ("" if nullable else " NOT NULL")
        cols.append(spec)
    body = ",\n  ".join(cols)
    return f"CREATE TABLE IF NOT EXISTS results (\n  {body}\n)"


_SCHEMA = [
    _create_sql(),
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, config TEXT, "
    "config_text TEXT, host TEXT, version TEXT, workers TEXT, jobs INTEGER, pending INTEGER)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
_INSERT = (f"INSERT INTO results ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))}) "
           "ON CONFLICT(job_key) DO NOTHING")


class ResultStore:
    """A benchmark's SQLite database (created on first use).  Use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise InvalidArgumentError(f"db {self.path}: no such results database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            with self.conn:
                for statement in _SCHEMA:
                    self.conn.execute(statement)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as e:
            raise InvalidArgumentError(f"db {self.path}: not a usable SQLite database ({e})") from None
        version = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise InvalidArgumentError(f"db {self.path}: schema version {version}, this bnnmip writes "
                                       f"{SCHEMA_VERSION}; use a new database")

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def done_keys(self) -> set[str]:
        """Keys of every job with a row."""
        return {k for (k,) in self.conn.execute("SELECT job_key FROM results")}

    def start_run(self, config: str, config_text: str, workers: str, jobs: int, pending: int) -> str:
        """Record one invocation; returns its run id (stored in every row it writes)."""
        run_id = uuid.uuid4().hex[:12]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self.conn:
            self.conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (run_id, now, config, config_text, host_name(), __version__, workers, jobs, pending))
        return run_id

    def add(self, row: ResultRow) -> bool:
        """Insert one finished job in its own transaction; False if its key was already recorded."""
        with self.conn:
            cursor = self.conn.execute(_INSERT, astuple(row))
        return cursor.rowcount == 1

    def delete_errors(self, keys: set[str]) -> int:
        """Delete the rows with status 'error' among ``keys`` (so that those jobs run again)."""
        errored = [(k,) for (k,) in self.conn.execute("SELECT job_key FROM results WHERE status = 'error'")
                   if k in keys]
        with self.conn:
            self.conn.executemany("DELETE FROM results WHERE job_key = ?", errored)
        return len(errored)

    def rows(self, keys: set[str] | None = None) -> list[ResultRow]:
        """Every row (or those with the given keys), in insertion order."""
        cursor = self.conn.execute(f"SELECT {', '.join(COLUMN_NAMES)} FROM results ORDER BY rowid")
        out = [_from_sql(values) for values in cursor]
        return out if keys is None else [r for r in out if r.job_key in keys]

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _from_sql(values) -> ResultRow:
    return ResultRow(*(bool(v) if base is bool and v is not None else v
                       for (_, base, _), v in zip(COLUMNS, values, strict=True)))


def write_csv(rows: list[ResultRow], out: typing.TextIO) -> None:
    """Write rows as CSV (header = column names; empty cell = NULL; booleans 0/1)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    for row in rows:
        writer.writerow(["" if v is None else int(v) if isinstance(v, bool) else v for v in astuple(row)])


def read_csv(source: typing.TextIO) -> list[ResultRow]:
    """Rows back from :func:`write_csv`'s output."""
    reader = csv.reader(source)
    header = next(reader, None)
    if header != COLUMN_NAMES:
        raise InvalidArgumentError("csv: the header is not that of a bnnmip results export")
    rows = []
    for line in reader:
        cells = zip(COLUMNS, line, strict=True)
        rows.append(ResultRow(*(_parse_cell(cell, base, nullable) for (_, base, nullable), cell in cells)))
    return rows


def _parse_cell(cell: str, base: type, nullable: bool):
    if cell == "" and (nullable or base is not str):
        return None
    if base is bool:
        return bool(int(cell))
    return base(cell)
