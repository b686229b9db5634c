"""The results store under hostile conditions (issue 15, findings 4 and 7).

* 4: a job's key holds everything that changes its answer (the grid ``levels``, the true label);
  rows stored under version-1 keys (``benchmarks/results/*.csv``, old databases) stay readable and
  are recognised as today's jobs;
* 7: the store opens read-only for reading, refuses foreign and newer databases without touching
  them, keeps computed results when the database is locked or full, and two concurrent writers
  split the jobs so that every job ends exactly once (also under SIGKILL and a read-only database:
  the short soak at the end; the full one is ``python benchmarks/store_soak.py``).

Benchmarks run on tiny random BNNs (784 binarized inputs, two ±1 layers of 16) whose MILPs solve in
a fraction of a second; most runs use an in-process Dask cluster of threads.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bnnmip import BnnmipError
from bnnmip.bench import ResultStore, expand, load_config, read_csv, run
from bnnmip.bench.jobs import job_key
from bnnmip.bench.rows import COLUMN_NAMES_V1, COLUMNS
from bnnmip.errors import StoreError
from tests.helpers import BENCHMARKS, ROOT, load_benchmark, one_line_error, slow

RESULTS = BENCHMARKS / "results"


def _soak_script():
    """benchmarks/store_soak.py, whose tiny benchmark (two random BNNs and their images) these tests share."""
    return load_benchmark("store_soak")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """tiny_255.toml and tiny_127.toml (2 models x 4 images x 2 radii, differing only in levels), tiny_soak.toml."""
    folder = tmp_path_factory.mktemp("store")
    make = _soak_script().make_benchmark
    for levels in (255, 127):
        make(folder, images=4, levels=levels, eps_levels=(1, 4), name=f"tiny_{levels}.toml")
    make(folder, images=8, eps_levels=(1, 4), name="tiny_soak.toml")
    return folder


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c.scheduler_address


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def cli(*args: str, cwd: Path = ROOT, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "bnnmip.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


# ====================================================================== finding 4: complete keys
def test_levels_and_the_true_label_are_part_of_the_key(tiny, tmp_path):
    a, b = (expand(load_config(tiny / f"tiny_{levels}.toml")) for levels in (255, 127))
    assert len(a) == len(b) and not {j.key for j in a} & {j.key for j in b}
    job = a[0]
    relabelled = job_key(job.model.sha256, job.image_index, hashlib.sha256(job.image).hexdigest()[:16], job.eps,
                         job.levels, job.label + 1, job.method, job.backend, job.target, job.time_limit, job.options)
    assert relabelled != job.key
@slow  # a benchmark run on Dask
def test_a_configuration_that_differs_only_in_levels_runs_its_own_jobs(tiny, tmp_path, cluster):
    db = tmp_path / "shared.sqlite"
    first = run(tiny / "tiny_255.toml", db=db, scheduler=cluster, progress=False)
    second = run(tiny / "tiny_127.toml", db=db, scheduler=cluster, progress=False)
    assert first.complete and second.complete
    assert second.skipped == 0 and second.ran == second.jobs  # not "nothing to run"
    with ResultStore.open_read(db) as store:
        assert {r.levels for r in store.rows()} == {255, 127} and len(store) == first.jobs + second.jobs


@pytest.mark.parametrize("name", ["quick", "flip_rate"])
def test_stored_version_1_rows_read_back_as_todays_jobs(name):
    """Every row of the committed CSVs (schema 1) maps onto exactly one job of today's configuration."""
    with open(RESULTS / f"{name}.csv", newline="") as f:
        rows = read_csv(f)
    jobs = {j.key: j for j in expand(load_config(ROOT / "benchmarks" / "configs" / f"{name}.toml"))}
    assert len({r.job_key for r in rows}) == len(rows) >= len(jobs) // 2 and {r.job_key for r in rows} <= set(jobs)
    assert all(r.levels == jobs[r.job_key].levels == 255 and r.label == jobs[r.job_key].label for r in rows)


def _v1_database(path: Path, csv_path: Path = RESULTS / "quick.csv", wal: bool = True) -> Path:
    """A schema-1 database (as bnnmip 0.1 wrote it: WAL journal) holding the rows of ``csv_path``."""
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == COLUMN_NAMES_V1
        text = {name for name, base, nullable in COLUMNS if base is str and not nullable}
        values = [[None if c == "" and name not in text else c for name, c in zip(COLUMN_NAMES_V1, line)]
                  for line in reader]
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(COLUMN_NAMES_V1).replace("job_key", "job_key TEXT PRIMARY KEY")
    conn.execute(f"CREATE TABLE results ({columns})")
    conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, config TEXT, "
                 "config_text TEXT, host TEXT, version TEXT, workers TEXT, jobs INTEGER, pending INTEGER)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    types_of = {name: base for name, base, _ in COLUMNS}
    conn.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(COLUMN_NAMES_V1))})",
                     [[_typed(v, types_of[n]) for n, v in zip(COLUMN_NAMES_V1, row)] for row in values])
    conn.commit()
    conn.close()
    return path


def _typed(cell, base: type):
    """A CSV cell as SQLite held it (booleans as 0/1)."""
    if cell is None or base is str:
        return cell
    return int(cell) if base in (int, bool) else float(cell)


def test_a_csv_that_is_not_an_export_is_an_error(tmp_path):
    import io

    for text in ("a,b\n1,2\n", ",".join(COLUMN_NAMES_V1) + "\n" + "x" * 200_000 + "\n",
                 ",".join(COLUMN_NAMES_V1) + "\n1,2\n"):
        with pytest.raises(StoreError):
            read_csv(io.StringIO(text))


def test_a_version_1_database_is_read_untouched_and_migrated_only_for_writing(tmp_path):
    db = _v1_database(tmp_path / "old.sqlite")
    with open(RESULTS / "quick.csv", newline="") as f:
        expected = read_csv(f)
    before, files = _digest(db), _files(tmp_path)
    with ResultStore.open_read(db) as store:
        assert store.rows() == expected
    assert _digest(db) == before and _files(tmp_path) == files
    with ResultStore(db) as store:  # for writing: migrated, in one transaction
        assert store.rows() == expected
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "results", "runs", "meta", "claims"}
    conn.close()


# ====================================================================== finding 7: ownership
def _foreign(path: Path, kind: str) -> Path:
    conn = sqlite3.connect(path)
    if kind == "other_application":
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'alice')")
    elif kind == "our_names_and_a_trigger":
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        conn.execute("CREATE TABLE results (job_key TEXT PRIMARY KEY)")
        conn.execute("CREATE TRIGGER t AFTER INSERT ON results BEGIN DELETE FROM meta; END")
    elif kind == "future_schema":
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        conn.execute("CREATE TABLE results (job_key TEXT PRIMARY KEY, something_new BLOB)")
    elif kind == "another_application_id":
        conn.execute("PRAGMA application_id = 1234")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.commit()
    conn.close()
    if kind == "not_sqlite":
        path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    return path


FOREIGN = ["other_application", "our_names_and_a_trigger", "future_schema", "another_application_id", "not_sqlite"]


@slow  # command lines in subprocesses
@pytest.mark.parametrize("kind", FOREIGN)
def test_a_database_bnnmip_does_not_own_is_refused_untouched(tiny, tmp_path, kind):
    db = _foreign(tmp_path / "their.sqlite", kind)
    before, files = _digest(db), _files(tmp_path)
    for call in (lambda: ResultStore(db), lambda: ResultStore.open_read(db)):
        with pytest.raises(BnnmipError) as info:
            call()
        assert "their.sqlite" in str(info.value)
    one_line_error(cli("results", str(db)), "their.sqlite")
    one_line_error(cli("bench", str(tiny / "tiny_255.toml"), "--db", str(db), "--workers", "1"), "their.sqlite")
    assert _digest(db) == before and _files(tmp_path) == files  # no table, no journal, no WAL switch
    if kind == "future_schema":
        assert "newer bnnmip" in cli("results", str(db)).stderr


def _drop_dac():
    """A prefix that runs a command without root's override of file permissions (so chmod applies)."""
    if os.geteuid() != 0:
        return ()
    if subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "true"]).returncode:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


@slow  # command lines in subprocesses
@pytest.mark.parametrize("version", [1, 2])
def test_a_read_only_database_can_be_read(tmp_path, version):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = _v1_database(folder / "db.sqlite")
    if version == 2:
        ResultStore(db).close()  # migrated
    os.chmod(db, 0o444)
    os.chmod(folder, 0o555)
    try:
        prefix = _drop_dac()
        assert subprocess.run([*prefix, "sh", "-c", f"echo x >> {db}"], capture_output=True).returncode != 0
        result = cli("results", str(db), prefix=prefix)
        assert result.returncode == 0, result.stderr
        assert f"{db}: 640 jobs" in result.stdout and "flip rate" in result.stdout
        one_line_error(cli("bench", str(ROOT / "benchmarks/configs/smoke.toml"), "--db", str(db), prefix=prefix),
                       "db.sqlite")
    finally:
        os.chmod(folder, 0o755)
        os.chmod(db, 0o644)


def _corrupt(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()


@slow  # command lines in subprocesses
@pytest.mark.parametrize("version, sql, fragment", [
    (2, "UPDATE results SET trace = 'not json' WHERE rowid = 3", "column trace"),
    (2, "UPDATE results SET image_index = 'seven' WHERE rowid = 5", "column image_index"),
    (2, "UPDATE results SET status = x'00ff' WHERE rowid = 2", "column status"),
    (1, "UPDATE results SET status = NULL WHERE rowid = 1", "column status is empty"),
    (1, "UPDATE results SET trace = '[[0, \"x\"]]' WHERE rowid = 4", "column trace"),
])
def test_rows_that_are_not_bnnmip_rows_are_named_not_tracebacks(tmp_path, version, sql, fragment):
    db = _v1_database(tmp_path / "db.sqlite", wal=False)
    if version == 2:
        ResultStore(db).close()
    _corrupt(db, sql)
    for command in (["results", str(db)], ["plot", str(db), "-o", str(tmp_path / "plots")]):
        one_line_error(cli(*command), "db.sqlite", "row '", fragment)


# ====================================================================== finding 7: failures while writing
def _rows(db: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {k: (run, status) for k, run, status in conn.execute("SELECT job_key, run_id, status FROM results")}
    finally:
        conn.close()


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(db, timeout=0.1)
        try:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
@slow  # a benchmark run on Dask against a locked database
def test_a_locked_database_loses_nothing(tiny, tmp_path, cluster):
    """Another process holds the database for 8 s mid-run: results wait, then every one is recorded."""
    db = tmp_path / "locked.sqlite"
    held = threading.Event()

    def hold():
        deadline = time.monotonic() + 60
        while _count(db) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(8)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    summary = run(tiny / "tiny_255.toml", db=db, scheduler=cluster, progress=False)
    holder.join()
    assert held.is_set() and summary.complete and summary.ran == summary.jobs
    assert len(_rows(db)) == summary.jobs and not list(tmp_path.glob("*.pending-*"))
@slow  # benchmark runs on Dask
def test_a_full_disk_keeps_the_results_for_the_next_run(tiny, tmp_path, cluster, monkeypatch):
    """SQLite says 'database or disk is full' after a few rows: the run ends with a one-line error naming
    the side journal; the next run records those results without computing them again."""
    db = tmp_path / "full.sqlite"
    real_connect = sqlite3.connect
    state = {"rows": 0}

    def full_after_three(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        if kwargs.get("uri") and "mode=rw" in str(args[0]):
            rows = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] if _has_results(conn) else 0
            state["rows"] = rows
            if rows >= 3:
                conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    monkeypatch.setattr(sqlite3, "connect", full_after_three)
    with pytest.raises(StoreError) as info:
        run(tiny / "tiny_255.toml", db=db, scheduler=cluster, progress=False, patience=3.0)
    message = str(info.value)
    assert "full" in message and ".pending-" in message and "\n" not in message
    journal = Path(re.search(r"kept in (\S+\.jsonl)", message).group(1))
    kept = len(journal.read_text().splitlines())
    assert kept >= 1 and len(_rows(db)) >= 3
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    before = _rows(db)
    summary = run(tiny / "tiny_255.toml", db=db, scheduler=cluster, progress=False)
    after = _rows(db)
    assert summary.complete and len(after) == summary.jobs and not journal.exists()
    first_run = {run_id for run_id, _ in before.values()}
    from_journal = [k for k, (run_id, _) in after.items() if run_id in first_run and k not in before]
    assert len(from_journal) == kept  # recorded under the first run's id: kept, not computed again
    assert summary.skipped == len(before) + kept


def _has_results(conn) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone())
@slow  # two benchmark runs in subprocesses
def test_two_concurrent_benches_split_the_jobs(tiny, tmp_path):
    """Two `bnnmip bench` on one database: both finish, every job has one row, none was computed twice."""
    db = tmp_path / "two.sqlite"
    cmd = [sys.executable, "-m", "bnnmip.bench", "bench", "tiny_soak.toml", "--db", str(db), "--workers", "1",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    jobs = len(expand(load_config(tiny / "tiny_soak.toml")))
    ran = [int(re.search(r"this run\s+(\d+) jobs", out).group(1)) for out, _ in outs]
    rows = _rows(db)
    assert len(rows) == jobs and sum(ran) == jobs, (ran, outs)  # split, not both doing everything
    assert all(f"complete, {jobs}/{jobs}" in out for out, _ in outs)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    conn.close()
@slow  # command lines in subprocesses
def test_results_do_not_create_a_database(tmp_path):
    one_line_error(cli("results", str(tmp_path / "none.sqlite")), "no such results database")
    assert not (tmp_path / "none.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    one_line_error(cli("results", str(empty)), "empty.sqlite")
    assert empty.stat().st_size == 0


# ====================================================================== the soak, short
@pytest.mark.slow
def test_a_short_soak_ends_every_job_exactly_once_and_loses_nothing(tmp_path, capsys):
    """benchmarks/store_soak.py for one round: two concurrent `bnnmip bench` on one database, SIGKILLed, made
    read-only and locked at random moments; every job ends once, with a clean run's status, nothing reported lost."""
    assert _soak_script().main(["--seconds", "15", "--round-seconds", "15", "--images", "3", "--seed", "3",
                                "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = re.search(r"total: jobs (\d+), rows (\d+), started (\d+), killed (\d+)", out)
    assert total, out
    jobs, rows, started, killed = (int(v) for v in total.groups())
    assert jobs == rows > 0 and started >= 2 and killed >= 1, out
    assert "wrong_status 0, lost 0" in out and "nothing lost: yes" in out

