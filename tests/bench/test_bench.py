"""bnnmip.bench: configs, the resumable results store on a real Dask cluster, exports and plots.

The networks are tiny random BNNs with input binarization, written to a temporary folder: their
MILPs solve to optimality in well under a second, so every job's status (adversarial or robust)
is the same on every run, which the kill-and-resume test needs.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnnmip import InvalidArgumentError
from bnnmip.bench import (
    BenchConfig,
    ImageSelection,
    ResultStore,
    expand,
    load_config,
    parse_config,
    read_csv,
    run,
    summarize,
    write_csv,
)
from bnnmip.cli import main as bench_main
from bnnmip.io.onnx_writer import random_params, to_onnx
from tests.helpers import BENCHMARKS, MODELS, slow

CONFIGS = BENCHMARKS / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMOKE_LIKE = """\
name = "tiny"
time_limit = 60.0
threads = 1
eps_levels = [1, 4]
methods = ["milp"]
backends = ["highs", "scip"]

[images]
first_correct = 6

[[models]]
file = "tiny_2x16.onnx"
data = "tiny_2x16.npz"

[[models]]
file = "tiny_3x16.onnx"
data = "tiny_3x16.npz"
"""


def _make_model(folder: Path, name: str, widths: list[int], seed: int) -> None:
    """A random BNN and 8 images: labels are its predictions, except image 1 (misclassified)."""
    from bnnmip import load_onnx

    rng = np.random.default_rng(seed)
    onnx.save(to_onnx(random_params(rng, 784, widths, 10, input_binarization=True)), folder / f"{name}.onnx")
    images = rng.integers(0, 256, size=(8, 784)).astype(np.uint8)
    labels = load_onnx(folder / f"{name}.onnx", levels=255).predict(images / 255.0)
    labels[1] = (labels[1] + 1) % 10
    np.savez(folder / f"{name}.npz", images=images, labels=labels.astype(np.uint8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with two tiny models, their data and ``tiny.toml`` (48 jobs)."""
    folder = tmp_path_factory.mktemp("bench")
    _make_model(folder, "tiny_2x16", [16, 16], seed=7)
    _make_model(folder, "tiny_3x16", [16, 16, 16], seed=8)
    (folder / "tiny.toml").write_text(SMOKE_LIKE)
    return folder


@pytest.fixture(scope="module")
def clean(tiny) -> Path:
    """A clean, uninterrupted run of tiny.toml on a 2-worker LocalCluster."""
    db = tiny / "clean.sqlite"
    summary = run(tiny / "tiny.toml", db=db, workers=2, progress=False)
    assert summary.complete and summary.ran == summary.jobs == 48 and summary.skipped == 0
    return db


# ------------------------------------------------------------------------------ configs and jobs
def test_expand_selects_correct_images_and_crosses_everything(tiny):
    config = load_config(tiny / "tiny.toml")
    jobs = expand(config)
    assert len(jobs) == 2 * 6 * 2 * 2  # models x images x eps x backends
    assert len({j.key for j in jobs}) == len(jobs)
    assert all(j.label == j.pred for j in jobs)
    assert 1 not in {j.image_index for j in jobs}  # the misclassified image is skipped
    assert {j.image_index for j in jobs} == {0, 2, 3, 4, 5, 6}
    assert {j.eps for j in jobs} == {1 / 255, 4 / 255}
    assert all(j.attack_options()["threads"] == 1 for j in jobs)


def test_image_selection_modes():
    labels, preds = [0, 1, 2, 3, 4], [0, 9, 2, 9, 4]
    assert ImageSelection(first_correct=2).select(labels, preds) == [0, 2]
    assert ImageSelection(first=4).select(labels, preds) == [0, 2]
    assert ImageSelection(indices=(3, 1)).select(labels, preds) == [3, 1]
    with pytest.raises(InvalidArgumentError, match="images.indices"):
        ImageSelection(indices=(7,)).select(labels, preds)


def _config(tiny, **changes) -> dict:
    base = {"eps_levels": [2], "methods": ["milp"], "time_limit": 5, "images": {"first_correct": 1},
            "models": [{"file": "tiny_2x16.onnx", "data": "tiny_2x16.npz"}]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("changes, key", [
    ({"methods": ["milp", "nosuch"]}, "methods[1]"),
    ({"models": [{"file": "missing.onnx", "data": "tiny_2x16.npz"}]}, "models[0].file"),
    ({"models": [{"file": "tiny_2x16.onnx", "data": "missing.npz"}]}, "models[0].data"),
    ({"eps_levels": [2, -1]}, "eps_levels[1]"),
    ({"eps_levels": ["two"]}, "eps_levels[0]"),
    ({"eps_levels": None, "eps": [1.5]}, "eps[0]"),
    ({"eps": [0.01]}, "eps"),
    ({"eps_levels": None}, "eps"),
    ({"backends": ["gurobi"]}, "backends[0]"),
    ({"time_limit": 0}, "time_limit"),
    ({"threads": 1.5}, "threads"),
    ({"method": ["milp"]}, "method: unknown key"),
    ({"images": {"first_correct": 1, "first": 2}}, "images"),
    ({"images": {"indices": [-1]}}, "images.indices[0]"),
    ({"targets": ["3"]}, "targets[0]"),
    ({"options": {"pgd": {"steps": 3}}}, "options.pgd"),
])
def test_config_errors_name_the_key(tiny, changes, key):
    with pytest.raises(InvalidArgumentError, match=r"config tiny\.toml: " + _escape(key)):
        parse_config(_config(tiny, **changes), tiny / "tiny.toml")


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_config_file_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no such file"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("methods = [\n")
    with pytest.raises(InvalidArgumentError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


@slow  # expands the quick config: loads all 16 shipped models
def test_shipped_configs_parse_and_quick_fits_70_minutes():
    configs = {name: load_config(CONFIGS / f"{name}.toml") for name in ("smoke", "quick", "paper", "flip_rate")}
    for name, config in configs.items():
        assert isinstance(config, BenchConfig) and config.name == name
        assert set(config.methods) >= {"milp", "pgd", "iprop", "iprop+pgd"}
    quick = configs["quick"]
    jobs = expand(quick)
    assert {(m.dataset, m.arch) for m in quick.models} == {
        (d, a) for d in ("fmnist", "mnist")
        for a in ("2x100", "2x200", "2x300", "2x400", "2x500", "3x100", "4x100", "5x100")
    }
    assert len(jobs) * quick.time_limit / 2 <= 70 * 60  # 2 workers, every job at its full limit


# ------------------------------------------------------------------------------ kill and resume
def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # the coordinator is still creating the schema
        return 0


def _bench(tiny: Path, db: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bnnmip.bench", "bench", "tiny.toml", "--db", str(db), "--workers", "2",
           "--no-progress"]
    return subprocess.Popen(cmd, cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _signal_when(proc: subprocess.Popen, db: Path, rows: int, sig: int, to_group: bool) -> None:
    deadline = time.monotonic() + 120
    while _count(db) < rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before {rows} rows were written: {proc.communicate()}"
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)


def _reap(proc: subprocess.Popen) -> tuple[str, str]:
    """Wait for the run; check its worker processes go away by themselves (then make sure they do)."""
    out, err = proc.communicate(timeout=60)
    try:
        for _ in range(100):
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
        pytest.fail("worker processes outlived their coordinator by 10 s")
    except ProcessLookupError:
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return out, err


def _snapshot(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {k: (run_id, status, finished) for k, run_id, status, finished in
                conn.execute("SELECT job_key, run_id, status, finished_at FROM results")}


@slow  # three runs in subprocesses, two of them killed part-way
def test_kill_interrupt_resume_equals_clean_run(tiny, clean):
    """SIGKILL part-way, then Ctrl-C part-way, then finish: every job once, statuses as a clean run's."""
    db = tiny / "killed.sqlite"
    expected = {j.key for j in expand(load_config(tiny / "tiny.toml"))}

    proc = _bench(tiny, db)
    _signal_when(proc, db, 2, signal.SIGKILL, to_group=False)
    _reap(proc)
    assert proc.returncode == -signal.SIGKILL
    after_kill = _snapshot(db)
    assert 2 <= len(after_kill) < len(expected), "the kill should land part-way"

    proc = _bench(tiny, db)  # Ctrl-C in a terminal signals the whole process group
    _signal_when(proc, db, len(after_kill) + 2, signal.SIGINT, to_group=True)
    out, err = _reap(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    after_interrupt = _snapshot(db)
    assert len(after_kill) < len(after_interrupt) < len(expected), "the interrupt should land part-way"
    assert all(after_interrupt[k] == v for k, v in after_kill.items())

    proc = _bench(tiny, db)
    out, err = _reap(proc)
    assert proc.returncode == 0, err
    assert f"{len(after_interrupt)} already done" in out
    final = _snapshot(db)
    assert set(final) == expected  # every job exactly once (job_key is the primary key)
    assert all(final[k] == v for k, v in after_interrupt.items())  # nothing done twice
    assert len({run_id for run_id, _, _ in final.values()}) == 3
    reference = _snapshot(clean)
    assert {k: v[1] for k, v in final.items()} == {k: v[1] for k, v in reference.items()}
    assert {"adversarial", "robust"} <= {status for _, status, _ in final.values()}
@slow  # reads the 48-job benchmark run on a 2-process cluster (the clean fixture)
def test_rerun_of_a_finished_benchmark_runs_nothing(tiny, clean):
    summary = run(tiny / "tiny.toml", db=clean, workers=2, progress=False)
    assert summary.ran == 0 and summary.skipped == summary.jobs == 48 and summary.complete
    assert "nothing to run" in str(summary)


# ------------------------------------------------------------------------------ results, plots
@slow  # reads the 48-job benchmark run on a 2-process cluster (the clean fixture)
def test_rows_hold_what_the_job_asked_and_found(clean, tiny):
    with ResultStore(clean) as store:
        rows = store.rows()
    assert len(rows) == 48
    for r in rows:
        assert r.model_file.endswith(".onnx") and len(r.model_sha256) == 64
        assert r.dataset == "tiny" and r.arch in ("2x16", "3x16")
        assert r.eps_levels in (1.0, 4.0) and r.backend in ("highs", "scip") and r.target is None
        assert r.status in ("adversarial", "robust") and r.error == ""
        assert r.trace_points() and r.trace_points()[0][0] == 0.0
        assert r.version and r.host and r.finished_at
        if r.status == "adversarial":
            assert r.adv_label != r.pred and r.verified and r.objective >= 0
        else:
            assert r.bound is not None and r.bound < 0
    # Both backends solve to optimality: they agree on every (model, image, eps).
    by_backend = {(r.model_sha256, r.image_index, r.eps, r.backend): r.status for r in rows}
    assert all(by_backend[k[:3] + ("highs",)] == by_backend[k[:3] + ("scip",)] for k in by_backend)
@slow  # reads the 48-job benchmark run on a 2-process cluster (the clean fixture)
def test_csv_export_round_trip(clean, tmp_path, capsys):
    with ResultStore(clean) as store:
        rows = store.rows()
    buffer = io.StringIO()
    write_csv(rows, buffer)
    buffer.seek(0)
    assert read_csv(buffer) == rows

    out = tmp_path / "results.csv"
    assert bench_main(["results", str(clean), "--csv", "-o", str(out)]) == 0
    with open(out, newline="") as f:
        assert read_csv(f) == rows

    assert bench_main(["results", str(clean)]) == 0
    table = capsys.readouterr().out
    assert "flip rate" in table and "milp/highs" in table and "milp/scip" in table
    lines = summarize(rows)
    assert len(lines) == 2 * 2 * 2  # archs x eps x variants
    assert all(s.attacked == 6 and s.flipped + s.robust == 6 for s in lines)


@slow  # a second export and plot of the results
def test_config_option_keeps_only_that_configurations_jobs(clean, tiny, tmp_path):
    """A database shared by two configurations: --config picks one's rows (a subset: 1 model, 3 images)."""
    sub = tiny / "sub.toml"
    one_model = SMOKE_LIKE.split("[[models]]\nfile = \"tiny_3x16")[0]
    sub.write_text(one_model.replace("first_correct = 6", "first_correct = 3"))
    out = tmp_path / "sub.csv"
    assert bench_main(["results", str(clean), "--csv", "-o", str(out), "--config", str(sub)]) == 0
    with open(out, newline="") as f:
        rows = read_csv(f)
    assert len(rows) == 1 * 3 * 2 * 2  # models x images x eps x backends
    assert {Path(r.model_file).name for r in rows} == {"tiny_2x16.onnx"}
    assert {r.image_index for r in rows} == {0, 2, 3}
    assert bench_main(["plot", str(clean), "-o", str(tmp_path / "plots"), "--config", str(sub)]) == 0


def test_results_of_a_missing_db_is_an_error(tmp_path, capsys):
    assert bench_main(["results", str(tmp_path / "none.sqlite")]) == 2
    assert "no such results database" in capsys.readouterr().err
@slow  # reads the 48-job benchmark run on a 2-process cluster (the clean fixture)
def test_plot_writes_four_figures(clean, tmp_path, capsys):
    from matplotlib.image import imread

    assert bench_main(["plot", str(clean), "-o", str(tmp_path / "plots")]) == 0
    for name in ("flip_rate", "objective_time", "backends", "certified"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert imread(png).shape[0] > 100
        assert (tmp_path / "plots" / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_certified_counts_every_complete_proof_and_a_flip_wins():
    """The certified panel: a robust row of any method is a proof ('exact' included); a flip by any
    method makes the image flipped whatever the order of the rows."""
    import dataclasses

    from bnnmip.bench.plots import certified_outcomes
    from bnnmip.bench.rows import ResultRow

    blank = {f.name: None for f in dataclasses.fields(ResultRow)}
    base = {**blank, "dataset": "d", "arch": "2x100", "model_sha256": "m", "eps_levels": 2.0}

    def row(image, method, status):
        return ResultRow(**{**base, "image_index": image, "method": method, "status": status})

    rows = [row(0, "pgd", "unknown"), row(0, "exact", "robust"),
            row(1, "milp", "robust"), row(1, "pgd", "unknown"),
            row(2, "exact", "unknown"), row(2, "iprop", "adversarial"),
            row(3, "pgd", "unknown"), row(3, "exact", "unknown")]
    outcome = {key[-1]: v for key, v in certified_outcomes(rows).items()}
    assert outcome == {0: "certified", 1: "certified", 2: "flipped", 3: "unknown"}


# ------------------------------------------------------------------------------ a job that raises
def _boom(net, x, eps, **kwargs):
    raise RuntimeError("deliberate failure")


def test_a_job_that_raises_is_recorded_and_the_others_complete(tiny, monkeypatch):
    from distributed import LocalCluster

    from bnnmip import attacks

    monkeypatch.setitem(attacks.METHODS, "boom", _boom)  # visible to thread workers of this process
    config = parse_config(_config(tiny, methods=["milp", "boom"], eps_levels=[4], time_limit=60,
                                  images={"first_correct": 3}), tiny / "tiny.toml")
    db = tiny / "errors.sqlite"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run(config, db=db, scheduler=cluster.scheduler_address, progress=False)
        assert summary.complete and summary.ran == 6 and dict(summary.statuses)["error"] == 3
        again = run(config, db=db, scheduler=cluster.scheduler_address, progress=False)
        assert again.ran == 0  # an error is a finished job ...
        retried = run(config, db=db, scheduler=cluster.scheduler_address, progress=False, retry_errors=True)
        assert retried.ran == 3  # ... unless asked to retry it
    with ResultStore(db) as store:
        rows = store.rows()
    assert len(rows) == 6
    for r in rows:
        if r.method == "boom":
            assert r.status == "error" and r.error == "RuntimeError: deliberate failure"
            assert r.objective is None and r.trace == "[]"
        else:
            assert r.status in ("adversarial", "robust") and r.error == ""


def test_workers_and_scheduler_arguments_are_checked(tiny):
    with pytest.raises(InvalidArgumentError, match="workers"):
        run(tiny / "tiny.toml", db=tiny / "x.sqlite", workers=0)
    with pytest.raises(InvalidArgumentError, match="workers"):
        run(tiny / "tiny.toml", db=tiny / "x.sqlite", workers=2, scheduler="tcp://127.0.0.1:1")


# ------------------------------------------------------------------------------ the shipped smoke config
@slow  # the smoke benchmark on the shipped models, on Dask
def test_shipped_smoke_config_runs_to_the_end(tmp_path):
    """smoke.toml on the shipped models (skipped until the models and all four methods exist)."""
    from bnnmip.attacks import METHODS

    needed = [MODELS / "fmnist_2x100.onnx", MODELS / "mnist_2x100.onnx"]
    if not all(p.is_file() for p in needed):
        pytest.skip("the shipped models are not in models/ yet")
    missing = {"milp", "pgd", "iprop", "iprop+pgd"} - set(METHODS)
    if missing:
        pytest.skip(f"methods {sorted(missing)} are not in bnnmip.attacks.METHODS yet")
    t0 = time.perf_counter()
    summary = run(CONFIGS / "smoke.toml", db=tmp_path / "smoke.sqlite", workers=2, progress=False)
    assert summary.complete and dict(summary.statuses).get("error", 0) == 0, str(summary)
    assert time.perf_counter() - t0 < 120
