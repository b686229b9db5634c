"""Soak of the results store (issue 15): two concurrent ``bnnmip bench`` on one database, under chaos.

For ``--seconds`` the script keeps two ``bnnmip bench`` coordinators running on one SQLite database
and, at random moments, SIGKILLs one of them (its whole process group: coordinator and workers, as a
crash would), makes the database file read-only and then writable again, or holds an exclusive lock
on it; a killed or finished coordinator is started again while jobs remain.  When a round's jobs are
all recorded, a new round starts on a fresh database.  The benchmark is tiny (random BNNs of 784
binarized inputs and two ±1 layers of 16, MILPs solved in a fraction of a second), so a round takes
tens of seconds and the whole soak a few minutes.

Checked after each round (and printed as counts):

* every job ends exactly once: one row per job (``job_key`` is the primary key), no row for
  anything else, no claim and no side journal left behind, and a last clean run has nothing to do;
* nothing wrong is recorded: every status equals that of a clean reference run;
* nothing computed is lost: for every coordinator that ended by itself, the rows carrying its run id
  are exactly the jobs it reported as run (results it held while the database was read-only or
  locked included); the rows of killed coordinators are counted too (recorded, or recovered from
  their side journals by a later run).

Usage: ``python benchmarks/store_soak.py [--seconds 180] [--seed 0] [--images 8] [--folder DIR]``;
exit status 0 when every check holds.  ``tests/system/test_hostile_store.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

CONFIG = """\
name = "soak"
time_limit = 30.0
levels = {levels}
eps_levels = {eps_levels}
methods = ["milp"]
backends = {backends}

[images]
first_correct = {images}

[[models]]
file = "soak_a.onnx"
data = "soak_a.npz"

[[models]]
file = "soak_b.onnx"
data = "soak_b.npz"
"""
_NO_DAC = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def make_benchmark(folder: Path, images: int = 8, levels: int = 255, backends=("highs",),
                   eps_levels=(1, 2, 3, 4, 5, 6), name: str = "soak.toml") -> Path:
    """Two tiny random BNNs (input binarization, 784 -> 16 -> 16 -> 10), their images and a configuration.

    The images' labels are the models' own predictions, so every image is attacked.
    """
    from bnnmip import load_onnx
    from bnnmip.io.onnx_writer import random_params, to_onnx

    for model, seed in (("soak_a", 7), ("soak_b", 8)):
        if not (folder / f"{model}.npz").exists():
            rng = np.random.default_rng(seed)
            onnx.save(to_onnx(random_params(rng, 784, [16, 16], 10, input_binarization=True)),
                      folder / f"{model}.onnx")
            pixels = rng.integers(0, 256, size=(max(images, 8), 784)).astype(np.uint8)
            labels = load_onnx(folder / f"{model}.onnx", levels=255).predict(pixels / 255.0)
            np.savez(folder / f"{model}.npz", images=pixels, labels=labels.astype(np.uint8))
    path = folder / name
    text = CONFIG.format(levels=levels, images=images, backends=list(backends), eps_levels=list(eps_levels))
    path.write_text(text.replace("'", '"'))
    return path


@dataclass
class Coordinator:
    """One ``bnnmip bench`` process (in its own process group)."""

    proc: subprocess.Popen
    killed: bool = False
    out: str = ""
    err: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        self.out, self.err = self.proc.communicate()
        try:  # leave no worker behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reported_ran(self) -> int | None:
        found = re.search(r"this run\s+(\d+) jobs", self.out)
        return int(found.group(1)) if found else (0 if "nothing to run" in self.out else None)


@dataclass
class Round:
    jobs: int = 0
    rows: int = 0
    started: int = 0
    killed: int = 0
    finished: int = 0
    refused: int = 0  # exited with an error (e.g. started while the database was read-only)
    read_only: int = 0
    locked: int = 0
    wrong_status: int = 0
    lost: int = 0  # reported as run by a coordinator that ended by itself, but not in the database
    rows_of_killed: int = 0
    errors: Counter = field(default_factory=Counter)  # the one-line errors of coordinators that ended with one
    leftovers: list = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> bool:
        return self.rows == self.jobs and not self.wrong_status and not self.lost and not self.leftovers


def _bench(config: Path, db: Path, prefix: tuple[str, ...]) -> Coordinator:
    cmd = [*prefix, sys.executable, "-m", "bnnmip.cli", "bench", str(config), "--db", str(db), "--workers", "1",
           "--no-progress"]
    return Coordinator(subprocess.Popen(cmd, cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True))


def _statuses(db: Path) -> dict[str, tuple[str, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {k: (run, status) for k, run, status in conn.execute("SELECT job_key, run_id, status FROM results")}
    finally:
        conn.close()


def _run_ids(db: Path) -> dict[int, str]:
    """pid -> run id, from the runs table (each run records its owner as host:pid)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        host = socket.gethostname()
        return {int(h.rsplit(":", 1)[1]): run for run, h in conn.execute("SELECT run_id, host FROM runs")
                if h and h.rsplit(":", 1)[0] == host}
    finally:
        conn.close()


def _hold_lock(db: Path, seconds: float) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    except sqlite3.Error:
        pass
    finally:
        conn.close()


def soak_round(config: Path, db: Path, reference: dict[str, str], rng: random.Random, chaos_seconds: float,
               prefix: tuple[str, ...], read_only_works: bool, log) -> Round:
    """Two coordinators on ``db`` with chaos for ``chaos_seconds`` (or until done), then the checks."""
    r, t0, coordinators, running = Round(jobs=len(reference)), time.monotonic(), [], []
    next_event, writable_at, lock = time.monotonic() + rng.uniform(0.5, 2.0), None, None

    def done() -> bool:
        return db.exists() and r.jobs == _count(db)

    while True:
        for c in list(running):
            if c.proc.poll() is not None:
                running.remove(c)
                c.reap()
                r.finished += not c.killed and c.proc.returncode == 0
                r.refused += not c.killed and c.proc.returncode != 0
        now = time.monotonic()
        if writable_at is not None and now >= writable_at:  # episodes overlap kills: end them on time
            os.chmod(db, 0o644)
            writable_at = None
        if lock is not None and not lock.is_alive():
            lock = None
        if done() and not running and writable_at is None and lock is None:
            break
        if not done():
            while len(running) < 2:
                c = _bench(config, db, prefix)
                coordinators.append(c)
                running.append(c)
                r.started += 1
        if now - t0 < chaos_seconds and now >= next_event and db.exists() and running:
            events = ["kill", "kill"] + (["read_only"] if read_only_works and writable_at is None else []) \
                + (["lock"] if lock is None else [])
            event, hold = rng.choice(events), rng.uniform(0.5, 3.0)
            if event == "kill":
                rng.choice(running).kill()
                r.killed += 1
            elif event == "read_only":
                os.chmod(db, 0o444)
                writable_at = now + hold
                r.read_only += 1
            else:
                lock = threading.Thread(target=_hold_lock, args=(db, hold))
                lock.start()
                r.locked += 1
            log(f"  t={now - t0:5.1f}s {event:<9} rows {_count(db)}/{r.jobs}")
            next_event = now + rng.uniform(0.5, 2.5)
        time.sleep(0.05)
    last = _bench(config, db, ())  # a clean run: it must find nothing to do
    last.reap()
    coordinators.append(last)
    if "nothing to run" not in last.out:
        r.leftovers.append(f"the last run still had work: {last.out.strip()} {last.err.strip()}")
    _check(r, db, reference, coordinators)
    r.seconds = time.monotonic() - t0
    return r


def _count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def _check(r: Round, db: Path, reference: dict[str, str], coordinators: list[Coordinator]) -> None:
    rows = _statuses(db)
    r.rows = len(rows)
    if set(rows) != set(reference):
        r.leftovers.append(f"{len(set(reference) - set(rows))} jobs without a row, {len(set(rows) - set(reference))} "
                           "rows of no job")
    r.wrong_status = sum(rows[k][1] != reference[k] for k in rows if k in reference)
    per_run = Counter(run for run, _ in rows.values())
    run_of = _run_ids(db)
    for c in coordinators:
        if "Traceback" in c.err:
            r.leftovers.append(f"a traceback: {c.err.strip().splitlines()[-1]}")
        if not c.killed and c.proc.returncode:
            r.errors[re.sub(r"\(.*", "", c.err.strip().splitlines()[-1] if c.err.strip() else "?").strip()] += 1
        run_id = run_of.get(c.pid)
        if c.killed:
            r.rows_of_killed += per_run.get(run_id, 0)
        elif c.proc.returncode == 0 and c.reported_ran() is not None:
            r.lost += max(0, c.reported_ran() - per_run.get(run_id, 0))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        claims = conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if claims:
        r.leftovers.append(f"{claims} claims left")
    if integrity != "ok":
        r.leftovers.append(f"integrity check: {integrity}")
    journals = list(db.parent.glob(f"{db.name}.pending-*"))
    if journals:
        r.leftovers.append(f"{len(journals)} side journals left")


def _read_only_works(folder: Path, prefix: tuple[str, ...]) -> bool:
    probe = folder / "probe"
    probe.write_text("x")
    os.chmod(probe, 0o444)
    denied = subprocess.run([*prefix, "sh", "-c", f"echo y >> {probe}"], capture_output=True).returncode != 0
    probe.unlink()
    return denied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="chaos time in all (default 180)")
    parser.add_argument("--round-seconds", type=float, default=45.0, help="chaos time per round (default 45)")
    parser.add_argument("--images", type=int, default=8, help="images per model (default 8: 96 jobs a round)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bnnmip-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = make_benchmark(folder, args.images)
    prefix = _NO_DAC if os.geteuid() == 0 and shutil.which("setpriv") else ()  # root: let chmod apply
    read_only_works = _read_only_works(folder, prefix)
    print(f"soak in {folder}: two coordinators, SIGKILL / read-only / lock at random moments"
          + ("" if read_only_works else " (read-only episodes skipped: permissions are not enforced here)"))
    ref = folder / "reference.sqlite"
    ref.unlink(missing_ok=True)
    reference_run = _bench(config, ref, ())
    reference_run.reap()
    if reference_run.proc.returncode:
        print(f"reference run failed: {reference_run.err}")
        return 1
    reference = {k: status for k, (_, status) in _statuses(ref).items()}
    print(f"reference: {len(reference)} jobs, {dict(Counter(reference.values()))}")
    rounds, spent = [], 0.0
    while spent < args.seconds or not rounds:
        db = folder / f"round{len(rounds)}.sqlite"
        chaos = min(args.round_seconds, max(args.seconds - spent, 1.0))
        print(f"round {len(rounds)}: {db.name}")
        r = soak_round(config, db, reference, rng, chaos, prefix, read_only_works, print)
        rounds.append(r)
        spent += min(r.seconds, chaos)
        print(f"round {len(rounds) - 1}: {r.rows}/{r.jobs} rows, {r.started} coordinators started, {r.killed} killed, "
              f"{r.finished} ended by themselves, {r.refused} ended with an error, {r.read_only} read-only and "
              f"{r.locked} lock episodes; wrong statuses {r.wrong_status}, lost {r.lost}, rows of killed runs "
              f"{r.rows_of_killed}; {r.seconds:.0f} s" + (f"; PROBLEMS: {r.leftovers}" if r.leftovers else ""))
        for message, n in r.errors.items():
            print(f"  {n} x {message}")
    total = {k: sum(getattr(r, k) for r in rounds) for k in ("jobs", "rows", "started", "killed", "finished", "refused",
                                                             "read_only", "locked", "wrong_status", "lost",
                                                             "rows_of_killed")}
    ok = all(r.ok() for r in rounds)
    print("total: " + ", ".join(f"{k} {v}" for k, v in total.items()) + f"; every job exactly once and nothing "
          f"lost: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
