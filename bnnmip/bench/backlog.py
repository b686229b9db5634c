"""Results computed but not yet in the database: kept in memory and in a side journal until recorded.

When a write to the results store fails (locked, read-only, disk full, I/O), the runner keeps the
row in a :class:`Backlog`: in memory, and appended (flushed and fsync'd) to a side journal next to
the database, ``<db>.pending-<run>.jsonl``, so that a process killed afterwards loses nothing it
had received.  A run holds an exclusive ``flock`` on its journal for its whole life; the next run
that opens the database for writing records the rows of every journal whose lock is free (its run
is gone) and deletes it (:func:`recover_journals`).  The backlog retries the database as the run
goes on and at its end; what is still pending then is reported, never dropped in silence.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import astuple
from pathlib import Path

from ..errors import BnnmipError
from ..files import open_for_writing
from .rows import ResultRow, row_from_values
from .store import ResultStore, StoreUnavailable


def journal_glob(db: Path) -> str:
    return f"{db.name}.pending-*.jsonl"


class Backlog:
    """The rows of one run that the database has not taken yet (see the module docstring)."""

    def __init__(self, db: Path, run_id: str):
        self.db, self.run_id = db, run_id
        self.rows: list[ResultRow] = []
        self.reason = ""  # why the database refused the last write
        self.journal: Path | None = None
        self.journal_error = ""  # why the journal could not be written, if it could not
        self._file = None

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, row: ResultRow, reason: str) -> None:
        """Hold ``row`` (the database refused it: ``reason``) in memory and in the side journal."""
        self.rows.append(row)
        self.reason = reason
        try:
            f = self._open()
            f.write(json.dumps(list(astuple(row))) + "\n")
            f.flush()
            os.fsync(f.fileno())
        except (OSError, BnnmipError) as e:  # a full disk or a read-only folder: memory only
            self.journal_error = str(e) if isinstance(e, BnnmipError) else (e.strerror or str(e))

    def flush(self, store: ResultStore) -> int:
        """Hand every held row to the database in one transaction; how many were new (0 if it still refuses)."""
        if not self.rows:
            return 0
        try:
            inserted = store.add_many(self.rows)
        except StoreUnavailable as e:
            self.reason = str(e)
            return 0
        self.rows.clear()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
                os.fsync(self._file.fileno())
        return inserted

    def close(self) -> None:
        """Release the journal: deleted when every row is in the database, else left for the next run."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            if not self.rows and self.journal is not None:
                self.journal.unlink()
            self._file.close()
        self._file = None

    def _open(self):
        if self._file is not None:
            return self._file
        self.journal = self.db.with_name(f"{self.db.name}.pending-{self.run_id}.jsonl")
        f = open_for_writing(self.journal, append=True)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise
        self._file = f
        return f


def recover_journals(store: ResultStore) -> int:
    """Record the rows of the side journals of runs that are gone; how many rows were new.

    A journal still locked belongs to a live run (which records it itself) and is left alone.  A
    journal whose rows the database refuses stays, for the next run.
    """
    recovered = 0
    for path in sorted(store.path.parent.glob(journal_glob(store.path))):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            f = open(path, "r+", encoding="utf-8")
        except OSError:
            continue
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its run is alive
            rows = _journal_rows(f, path)
            try:
                recovered += store.add_many(rows) if rows else 0
            except StoreUnavailable:
                continue
            path.unlink()
    return recovered


def _journal_rows(f, path: Path) -> list[ResultRow]:
    rows = []
    for n, line in enumerate(f, start=1):
        try:
            values = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut short by a kill: its row was never acknowledged
        if isinstance(values, list):
            rows.append(row_from_values(values, f"journal {path} line {n}"))
    return rows
