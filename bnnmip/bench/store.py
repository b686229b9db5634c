"""The results store: a SQLite database that bnnmip owns, and nothing else it touches.

**Ownership.**  Every open first identifies the file through a read-only connection
(:func:`identify`): an empty or new file is bnnmip's to create, a bnnmip database of this schema
is used, one of schema 1 is migrated (in one transaction, only when opened for writing), and
anything else (another application's tables, views or triggers, a newer schema) is refused with
:class:`~bnnmip.errors.StoreError` before a single byte is written: no table added, no journal mode
switched.  :meth:`ResultStore.open_read` (``bnnmip results``, ``bnnmip plot``) never writes at all,
and reads a database whose file or folder is read-only.

**Resumability** rests on three rules: ``job_key`` is the primary key, so a job is recorded at most
once; a row is INSERTed only when its job has finished, in its own transaction
(``synchronous=FULL``), so a process killed at any moment leaves every recorded job whole; a run
skips every job with a row.

**Concurrent writers.**  Before a run submits a job it *claims* it (table ``claims``: job key, run,
owner ``host:pid``, lease expiry); the row's INSERT and the claim's DELETE are one transaction.  A
claim is honoured while its lease runs (the owner renews it) and its owner lives: the claims of a
process that died on this host, or whose lease ran out, are taken over.  Two ``bnnmip bench`` on one
database therefore split the jobs, and every job ends with exactly one row.

Every write opens its own connection (``mode=rw``: a database deleted meanwhile is never silently
recreated) and turns any SQLite failure (locked, read-only, disk full, I/O) into
:class:`StoreUnavailable`, which the runner answers by keeping the result and retrying
(:mod:`bnnmip.bench.backlog`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import astuple
from pathlib import Path

from ..errors import InvalidArgumentError, StoreError
from ..version import __version__
from .rows import (  # ResultRow and the CSV functions lived here before rows.py: still importable from here
    COLUMN_NAMES,
    COLUMN_NAMES_V1,
    COLUMNS,
    ResultRow,
    read_csv,
    row_from_v1,
    row_from_values,
    write_csv,
)

__all__ = ["SCHEMA_VERSION", "ResultRow", "ResultStore", "StoreUnavailable", "identify", "read_csv", "write_csv"]

SCHEMA_VERSION = "2"
APPLICATION_ID = 0x626E6D70  # "bnmp", in the SQLite header of every database bnnmip creates
_TABLES = {"results", "runs", "meta", "claims"}
_TABLES_V1 = {"results", "runs", "meta"}
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT", bool: "INTEGER"}


class StoreUnavailable(StoreError):
    """A write (or read) failed for a reason that may pass: locked, read-only, disk full, I/O error."""


def _create_results_sql() -> str:
    cols = []
    for name, base, nullable in COLUMNS:
        spec = f"{name} {_SQL_TYPES[base]}"
        spec += " PRIMARY KEY" if name == "job_key" else ("" if nullable else " NOT NULL")
        cols.append(spec)
    return "CREATE TABLE results (\n  " + ",\n  ".join(cols) + "\n)"


_SCHEMA = [
    _create_results_sql(),
    "CREATE TABLE runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, config TEXT, config_text TEXT, "
    "host TEXT, version TEXT, workers TEXT, jobs INTEGER, pending INTEGER)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE claims (job_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, owner TEXT NOT NULL, expires REAL NOT NULL)",
]
_INSERT = (f"INSERT INTO results ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))}) "
           "ON CONFLICT(job_key) DO NOTHING")


def owner_name() -> str:
    """This process as a claim owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_dead(owner: str) -> bool:
    """Whether ``owner`` is a process of this host that no longer exists (its claims are free)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def identify(conn: sqlite3.Connection, path: Path) -> str:
    """'empty', 'v1' or 'v2' for a database bnnmip may use; StoreError (naming why) for any other."""
    objects = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex_%'").fetchall()
    tables = {name for kind, name in objects if kind == "table"}
    if not objects:
        return "empty"
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    if len(tables) != len(objects) or "meta" not in tables or not tables <= _TABLES or app not in (0, APPLICATION_ID):
        shown = sorted(name for _, name in objects)[:6]
        raise StoreError(f"db {path}: not a bnnmip results database (it holds {shown}); bnnmip leaves it untouched")
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = found[0] if found else None
    columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    if version == SCHEMA_VERSION and tables == _TABLES and columns == COLUMN_NAMES:
        return "v2"
    if version == "1" and tables == _TABLES_V1 and columns == COLUMN_NAMES_V1:
        return "v1"
    if isinstance(version, str) and version.isdigit() and int(version) > int(SCHEMA_VERSION):
        raise StoreError(f"db {path}: schema version {version} was written by a newer bnnmip (this one reads "
                         f"{SCHEMA_VERSION}); it is left untouched")
    raise StoreError(f"db {path}: not a bnnmip results database of a known schema (version {version!r}); "
                     "bnnmip leaves it untouched")


class ResultStore:
    """A benchmark's SQLite database.  Use as a context manager.

    ``ResultStore(path)`` opens for writing (creating the file if needed, migrating schema 1);
    ``ResultStore(path, create=False)`` or :meth:`open_read` opens read-only, never writing.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.writable = create
        if not self.path.exists() and not create:
            raise InvalidArgumentError(f"db {self.path}: no such results database")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"db {self.path}: not a regular file")
        self.kind = self._identify() if self.path.exists() else "empty"
        if create and self.kind != "v2":
            self._create_or_migrate()
        elif not create and self.kind == "empty":
            raise StoreError(f"db {self.path}: an empty database, not bnnmip results")

    @classmethod
    def open_read(cls, path: str | os.PathLike) -> ResultStore:
        """Read-only: never creates, migrates or writes (rows of schema 1 are converted in memory)."""
        return cls(path, create=False)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between calls (every call has its own connection)."""

    # ------------------------------------------------------------------ connections
    def _uri(self, mode: str, immutable: bool = False) -> str:
        return self.path.resolve().as_uri() + f"?mode={mode}" + ("&immutable=1" if immutable else "")

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection; a WAL database in a read-only folder is read as immutable."""
        try:
            # A WAL database that no writer has open (no -wal file) is read as immutable, so that
            # reading it creates no -wal/-shm files beside someone else's database.
            conn = sqlite3.connect(self._uri("ro", immutable=self._quiet_wal()), uri=True, timeout=self.busy_timeout)
            try:
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as e:
                if "unable to open" not in str(e) and "readonly" not in str(e):
                    raise
                conn.close()  # a WAL database whose shared-memory file cannot be made here: nobody writes it
                conn = sqlite3.connect(self._uri("ro", immutable=True), uri=True)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"db {self.path}: cannot open it to read ({e})") from None
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "malformed" in str(e):
                raise StoreError(f"db {self.path}: not a usable SQLite database ({e})") from None
            raise StoreUnavailable(f"db {self.path}: cannot read it ({e})") from None
        finally:
            conn.close()

    def _quiet_wal(self) -> bool:
        """Whether the file's header says WAL mode while no -wal file (so no writer) exists."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
        except OSError:
            return False
        wal = len(header) == 100 and header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"
        return wal and not self.path.with_name(self.path.name + "-wal").exists()

    @contextlib.contextmanager
    def _writer(self, mode: str = "rw") -> Iterator[sqlite3.Connection]:
        """One write transaction on its own connection; any SQLite failure is :class:`StoreUnavailable`."""
        conn = None
        try:
            conn = sqlite3.connect(self._uri(mode), uri=True, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise StoreUnavailable(f"db {self.path}: cannot write ({e})") from None
        finally:
            if conn is not None:
                conn.close()

    def _identify(self) -> str:
        with self._reader() as conn:
            return identify(conn, self.path)

    def _create_or_migrate(self) -> None:
        if not self.path.parent.is_dir():
            raise InvalidArgumentError(f"db {self.path}: folder {str(self.path.parent)!r} does not exist")
        try:
            with self._writer("rwc") as conn:
                kind = identify(conn, self.path)  # again, inside the transaction: nobody changed it meanwhile
                if kind == "v1":
                    self._migrate_v1(conn)
                elif kind == "empty":
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except StoreUnavailable as e:
            raise StoreError(f"{e} (the database must be writable to start a benchmark)") from None
        self.kind = "v2"

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Schema 1 → 2 in the caller's transaction: levels and linf columns, version-2 keys, a claims table."""
        old = conn.execute(f"SELECT {', '.join(COLUMN_NAMES_V1)} FROM results ORDER BY rowid").fetchall()
        rows = [row_from_v1(values, f"db {self.path}") for values in old]  # a bad row refuses the migration
        conn.execute("ALTER TABLE results RENAME TO results_v1")
        conn.execute(_SCHEMA[0])
        conn.executemany(_INSERT, [astuple(r) for r in rows])
        conn.execute("DROP TABLE results_v1")
        conn.execute(_SCHEMA[3])
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ reading
    def rows(self, keys: set[str] | None = None) -> list[ResultRow]:
        """Every row (or those with the given keys), in insertion order, each checked."""
        names = COLUMN_NAMES if self.kind == "v2" else COLUMN_NAMES_V1
        convert = row_from_values if self.kind == "v2" else row_from_v1
        with self._reader() as conn:
            values = conn.execute(f"SELECT {', '.join(names)} FROM results ORDER BY rowid").fetchall()
        out = [convert(v, f"db {self.path}") for v in values]
        return out if keys is None else [r for r in out if r.job_key in keys]

    def done_keys(self) -> set[str]:
        """Keys of every job with a row."""
        if self.kind != "v2":
            return {r.job_key for r in self.rows()}
        with self._reader() as conn:
            return {k for (k,) in conn.execute("SELECT job_key FROM results")}

    def __len__(self) -> int:
        with self._reader() as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    # ------------------------------------------------------------------ writing
    def start_run(self, config: str, config_text: str, workers: str, jobs: int, pending: int) -> str:
        """Record one invocation; returns its run id (stored in every row it writes)."""
        run_id = uuid.uuid4().hex[:12]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self._writer() as conn:
            conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (run_id, now, config, config_text, owner_name(), __version__, workers, jobs, pending))
        return run_id

    def add(self, row: ResultRow) -> bool:
        """Insert one finished job and drop its claim, in one transaction; False if its key was already recorded."""
        return self.add_many([row]) == 1

    def add_many(self, rows: Iterable[ResultRow]) -> int:
        """Insert finished jobs (and drop their claims) in one transaction; how many were new."""
        rows = list(rows)
        with self._writer() as conn:
            before = conn.total_changes
            for row in rows:
                conn.execute(_INSERT, astuple(row))
            inserted = conn.total_changes - before
            conn.executemany("DELETE FROM claims WHERE job_key = ?", [(r.job_key,) for r in rows])
        return inserted

    def delete_errors(self, keys: set[str]) -> int:
        """Delete the rows with status 'error' among ``keys`` (so that those jobs run again)."""
        with self._reader() as conn:
            errored = [(k,) for (k,) in conn.execute("SELECT job_key FROM results WHERE status = 'error'") if k in keys]
        with self._writer() as conn:
            conn.executemany("DELETE FROM results WHERE job_key = ?", errored)
        return len(errored)

    def claim(self, keys: list[str], run_id: str, lease: float) -> tuple[set[str], set[str]]:
        """Claim the jobs among ``keys`` that have no row and no live claim of another run.

        Returns (claimed, held elsewhere); the other keys already have a row.
        """
        now, owner, claimed, elsewhere = time.time(), owner_name(), set(), set()
        with self._writer() as conn:
            for key in keys:
                if conn.execute("SELECT 1 FROM results WHERE job_key = ?", (key,)).fetchone():
                    continue
                held = conn.execute("SELECT run_id, owner, expires FROM claims WHERE job_key = ?", (key,)).fetchone()
                if held and held[0] != run_id and held[2] >= now and not _owner_dead(held[1]):
                    elsewhere.add(key)
                    continue
                conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (key, run_id, owner, now + lease))
                claimed.add(key)
        return claimed, elsewhere

    def renew(self, run_id: str, lease: float) -> None:
        """Extend the leases of this run's claims."""
        with self._writer() as conn:
            conn.execute("UPDATE claims SET expires = ? WHERE run_id = ?", (time.time() + lease, run_id))

    def release(self, run_id: str) -> None:
        """Drop this run's remaining claims (its jobs are free for the next run)."""
        with self._writer() as conn:
            conn.execute("DELETE FROM claims WHERE run_id = ?", (run_id,))
