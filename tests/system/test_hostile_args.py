"""Hostile arguments, data files, configurations and output paths (issue 15, findings 3, 6, 8, 9).

* 3: "verified" means onnxruntime's label changed **and** the input is within ε of the clean one
  **and** inside the input range, measured independently of the box the attack used;
* 6: limits on what an argument, a data file or a configuration declares, checked before allocating;
* 8: writes never follow a link or land on a folder; a configuration cannot name files outside;
* 9: every mistake is one safe line on stderr, never a traceback or someone else's log line.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnmip import BnnmipError, attack, load_onnx, minimal_eps
from bnnmip.attacks import METHODS, pgd
from bnnmip.attacks.result import recheck
from bnnmip.bench import jobs as bench_jobs
from bnnmip.bench import parse_config
from bnnmip.box import InputBox
from bnnmip.io.datasets import load_npz
from bnnmip.io.onnx_writer import Pattern, random_params, to_onnx
from bnnmip.milp.formulation import attack_milp
from tests.helpers import ROOT, one_line_error, slow

N_IN, K = 6, 3


def _message(call) -> str:
    with pytest.raises(BnnmipError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def cli(*args: str, cwd: Path | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "bnnmip.cli", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BNN on [0, 1]^6, an input in the middle and its label."""
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.onnx"
    path.write_bytes(to_onnx(random_params(np.random.default_rng(0), N_IN, [5, 4], K), Pattern()).SerializeToString())
    net = load_onnx(path)
    x = np.full(N_IN, 0.5)
    return net, x, int(net.predict(x)[0]), path


# ====================================================================== finding 3: verified
def _flip(net, x, label, eps: float) -> np.ndarray:
    """An input within ``eps`` of ``x`` (inside [0, 1]) that changes the label."""
    rng = np.random.default_rng(5)
    for _ in range(20000):
        cand = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1)
        if net.predict(cand)[0] != label:
            return cand
    pytest.skip("no flip within eps on this tiny net")


def test_recheck_asks_label_distance_and_range_independently(tiny):
    net, x, label, _ = tiny
    near = _flip(net, x, label, 0.5)
    assert recheck(net, x, near, 0.5, label).ok
    far = recheck(net, x, near, 0.5 * float(np.abs(near - x).max()), label)  # the same input, a smaller eps
    assert far.label_changed and not far.within_eps and not far.ok and "> eps" in far.describe()
    outside = near.copy()
    outside[0] = 1.5
    checked = recheck(net, x, outside, 10.0, label)
    assert not checked.in_range and not checked.ok
    same = recheck(net, x, x, 0.5, label)
    assert not same.label_changed and not same.ok
    nan = recheck(net, x, np.where(np.arange(N_IN) == 0, np.nan, near), 0.5, label)
    assert not nan.ok
@slow  # PGD runs to its 3 s limit
def test_an_attack_with_a_garbage_box_never_reports_a_verified_flip(tiny, monkeypatch):
    """The box of issue 15.3 (overflowed grid indices): wider than eps. Flips found there are not 'verified'."""
    net, x, label, _ = tiny
    lo, hi = np.zeros(N_IN), np.ones(N_IN)
    monkeypatch.setattr(pgd, "input_box", lambda net, x, eps, levels=None: InputBox(lo, hi, origin=0.0))
    result = pgd.pgd_attack(net, x, 1e-6, time_limit=3.0, levels=None)
    assert result.status != "adversarial" and not result.verified and result.x_adv is None
    assert "flipped in bnnmip but not in onnxruntime" in result.message


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_adversarial_result_carries_the_recheck(tiny, method):
    net, x, label, _ = tiny
    result = attack(net, x, 0.5, method=method, time_limit=10.0)
    if result.status != "adversarial":
        pytest.skip(f"{method} found no flip on the tiny net")
    check = result.check
    assert check is not None and check.ok and result.verified
    assert check.linf <= 0.5 and check.linf == pytest.approx(float(np.abs(result.x_adv - x).max()))
    assert check.onnx_label != label


def test_minimal_eps_carries_the_recheck(tiny):
    net, x, label, _ = tiny
    x = np.round(x * 255) / 255
    result = minimal_eps(net, x, levels=255, time_limit=30.0)
    assert result.x_adv is not None and result.check is not None and result.check.ok and result.verified
    assert result.check.linf <= result.found_adversarial_at * result.step + 1e-12
    assert "onnxruntime" in result.summary()


@pytest.mark.parametrize("levels", [10**20, 2**24 + 1, 2.5, -3, True])
def test_grids_that_overflow_are_refused_everywhere(tiny, levels):
    net, x, label, _ = tiny
    for call in (lambda: attack(net, x, 0.1, method="pgd", levels=levels, time_limit=2),
                 lambda: attack_milp(net, x, 0.1, (label + 1) % K, levels=levels),
                 lambda: pgd.input_box(dataclasses.replace(net, levels=levels), x, 0.1)):
        assert "levels=" in _message(call)
@slow  # command lines in subprocesses
def test_grids_that_overflow_are_refused_on_the_command_line_and_in_configs(tmp_path):
    model, data = "models/fmnist_2x100.onnx", "models/fmnist_test100.npz"
    for levels in ("1e20", "99999999999", "0"):
        one_line_error(cli("attack", model, "--data", data, "--index", "0", "--eps", "0.02", "--levels", levels,
                           "--time-limit", "5"), "levels")
    base = {"methods": ["pgd"], "eps_levels": [2], "images": {"first_correct": 1},
            "models": [{"file": str(ROOT / model), "data": str(ROOT / data)}]}
    for levels in (1e35, 2**40, 0):
        assert "levels" in _message(lambda v=levels: parse_config({**base, "levels": v}, tmp_path / "c.toml"))


# ====================================================================== finding 6: limits on arguments
def test_pgd_with_a_huge_step_budget_allocates_nothing_and_stops_on_time(tiny):
    net, x, _, _ = tiny
    tracemalloc.start()
    t0 = time.perf_counter()
    result = pgd.pgd_attack(net, x, 1e-4, steps=10**12, time_limit=1.0)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.status in ("unknown", "adversarial") and elapsed < 5 and peak < 32 * 2**20


def test_pgd_batch_is_bounded(tiny):
    net, x, _, _ = tiny
    assert "batch=" in _message(lambda: pgd.pgd_attack(net, x, 0.1, batch=10**9, restarts=10**9, time_limit=1))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("limit", [math.inf, 1e300])
def test_an_infinite_time_limit_is_refused(tiny, method, limit):
    net, x, _, _ = tiny
    assert "time_limit=" in _message(lambda: attack(net, x, 0.1, method=method, time_limit=limit))
@slow  # a command line in a subprocess
def test_an_infinite_time_limit_is_refused_by_minimal_eps_and_the_cli(tiny):
    net, x, _, _ = tiny
    assert "time_limit=inf" in _message(lambda: minimal_eps(net, np.zeros(N_IN), time_limit=math.inf))
    one_line_error(cli("attack", "models/fmnist_2x100.onnx", "--index", "0", "--eps", "0.02", "--method", "pgd",
                       "--time-limit", "inf"), "time_limit=inf")


def test_solver_threads_are_bounded(tiny):
    net, x, label, _ = tiny
    for threads in (10**6, 0, -1):
        assert "threads=" in _message(lambda t=threads: attack(net, x, 0.1, method="milp", threads=t, time_limit=5))


def _npz(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy(array: np.ndarray | None = None, header: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buffer, header)
        return b"\x93NUMPY\x01\x00" + buffer.getvalue() if not buffer.getvalue().startswith(b"\x93NUMPY") \
            else buffer.getvalue()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _bomb(path: Path) -> Path:
    """A valid header for 2 images, then 256 MiB of zeros, deflated into about 256 KiB."""
    header = _npy(header={"descr": "|u1", "fortran_order": False, "shape": (2, 784)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("images.npy", "w", force_zip64=True) as f:
            f.write(header)
            for _ in range(256):
                f.write(bytes(2**20))
        z.writestr("labels.npy", _npy(np.zeros(2, np.int64)))
    return path


NPZ_CASES = {
    "declares_730_gib": (lambda p: _npz(p, {"images.npy": _npy(header={"descr": "|u1", "fortran_order": False,
                                                                          "shape": (10**6, 784_000)}),
                                            "labels.npy": _npy(np.zeros(1, np.int64))}), "refused before reading"),
    "string_labels": (lambda p: _npz(p, {"images.npy": _npy(np.zeros((2, 784), np.uint8)),
                                         "labels.npy": _npy(np.array(["cat", "dog"]))}), "expected numbers"),
    "empty_images": (lambda p: _npz(p, {"images.npy": _npy(np.zeros((0, 784), np.uint8)),
                                        "labels.npy": _npy(np.zeros(0, np.int64))}), "no images"),
    "negative_labels": (lambda p: _npz(p, {"images.npy": _npy(np.zeros((2, 784), np.uint8)),
                                           "labels.npy": _npy(np.array([1, -1]))}), "non-negative integers"),
    "truncated_data": (lambda p: _npz(p, {"images.npy": _npy(np.zeros((2, 784), np.uint8))[:-100],
                                          "labels.npy": _npy(np.zeros(2, np.int64))}), "holds"),
    "huge_header": (lambda p: _npz(p, {"images.npy": b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{",
                                       "labels.npy": _npy(np.zeros(2, np.int64))}), "images.npz"),
    "a_plain_npy": (lambda p: p.write_bytes(_npy(np.zeros((2, 784), np.uint8))) and p, "not an .npz"),
}


@pytest.mark.parametrize("name", sorted(NPZ_CASES))
def test_hostile_data_files_are_refused_before_reading(tmp_path, name):
    build, fragment = NPZ_CASES[name]
    path = build(tmp_path / "images.npz")
    tracemalloc.start()
    message = _message(lambda: load_npz(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fragment in message and peak < 16 * 2**20
@slow  # builds a zip of 200,000 entries
def test_a_zip_directory_bomb_is_refused_from_its_end_record(tmp_path):
    """200,000 empty files: zipfile would build an object per entry before any other check."""
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", _npy(np.zeros((2, 784), np.uint8)))
        z.writestr("labels.npy", _npy(np.zeros(2, np.int64)))
        for i in range(200_000):
            z.writestr(zipfile.ZipInfo(f"{i}"), b"")
    tracemalloc.start()
    message = _message(lambda: load_npz(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "200,002 files inside" in message and peak < 4 * 2**20


def test_a_zip_bomb_is_read_only_as_far_as_its_header_declares(tmp_path):
    path = _bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    t0 = time.perf_counter()
    data = load_npz(path)  # 2 images of zeros: what the header declares, nothing more is inflated
    assert time.perf_counter() - t0 < 1.0 and tracemalloc.get_traced_memory()[1] < 16 * 2**20
    tracemalloc.stop()
    assert data.images.shape == (2, 784)
@slow  # command lines in subprocesses
def test_bad_data_files_are_one_line_on_the_command_line(tmp_path):
    for name in ("string_labels", "empty_images"):
        path = NPZ_CASES[name][0](tmp_path / f"{name}.npz")
        one_line_error(cli("predict", "models/fmnist_2x100.onnx", "--data", str(path)), name)


def test_the_job_list_is_counted_before_it_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(bench_jobs, "MAX_JOBS", 10)
    monkeypatch.setattr(bench_jobs, "Job", lambda *a, **k: built.append(1))
    config = parse_config({"methods": ["pgd", "milp"], "eps_levels": [1, 2, 3], "images": {"first_correct": 5},
                           "models": [{"file": str(ROOT / "models/fmnist_2x100.onnx"),
                                       "data": str(ROOT / "models/fmnist_test100.npz")}]}, tmp_path / "c.toml")
    assert "30 jobs or more" in _message(lambda: bench_jobs.expand(config)) and not built


def test_a_config_cannot_declare_endless_models_or_unserialisable_options(tmp_path, monkeypatch):
    from bnnmip.bench import config as bench_config

    monkeypatch.setattr(bench_config, "MAX_MODELS", 3)
    model = {"file": str(ROOT / "models/fmnist_2x100.onnx"), "data": str(ROOT / "models/fmnist_test100.npz")}
    base = {"methods": ["pgd"], "eps_levels": [2], "images": {"first_correct": 1}}
    assert "limit of 3 models" in _message(lambda: parse_config({**base, "models": [model] * 4}, tmp_path / "c.toml"))
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    assert "options.pgd" in _message(lambda: parse_config({**base, "models": [model], "options": {"pgd": deep}},
                                                         tmp_path / "c.toml"))
@slow  # command lines in subprocesses
def test_hostile_toml_is_refused(tmp_path):
    from bnnmip.bench import load_config

    (tmp_path / "deep.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "deep.toml" in _message(lambda: load_config(tmp_path / "deep.toml"))
    (tmp_path / "big.toml").write_text("# " + "x" * 2**21 + "\n")
    assert "over bnnmip's limit" in _message(lambda: load_config(tmp_path / "big.toml"))
    one_line_error(cli("bench", str(tmp_path / "deep.toml")), "deep.toml")


@slow  # a command line in a subprocess each
@pytest.mark.parametrize("args, fragment", [
    (["--workers", "10000"], "workers=10000"),
    (["--scheduler", "not-an-address"], "scheduler="),
    (["--scheduler", "tcp://"], "scheduler="),
    (["--scheduler", "tcp://[::1"], "scheduler="),
])
def test_worker_counts_and_scheduler_addresses_are_checked(tmp_path, args, fragment):
    one_line_error(cli("bench", "benchmarks/configs/smoke.toml", "--db", str(tmp_path / "x.sqlite"), *args), fragment)
    assert not (tmp_path / "x.sqlite").exists()  # refused before the database was touched


# ====================================================================== finding 8: writes and reads
@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


def _export(out: Path) -> subprocess.CompletedProcess:
    return cli("export", "models/fmnist_2x100.onnx", "--index", "0", "--eps", "0.01", "--target", "3",
               "-o", str(out))
@slow  # command lines in subprocesses
def test_export_never_writes_through_a_link_or_onto_a_folder(tmp_path, victim):
    (tmp_path / "link.mps").symlink_to(victim)
    one_line_error(_export(tmp_path / "link.mps"), "symbolic link")
    assert victim.read_text() == "precious"
    (tmp_path / "folder.mps").mkdir()
    one_line_error(_export(tmp_path / "folder.mps"), "cannot write")
    os.mkfifo(tmp_path / "fifo.mps")
    one_line_error(_export(tmp_path / "fifo.mps"), "cannot write")
@slow  # a benchmark run and command lines in subprocesses
def test_results_csv_never_writes_through_a_link(tmp_path, victim, store_db):
    (tmp_path / "link.csv").symlink_to(victim)
    one_line_error(cli("results", str(store_db), "--csv", "-o", str(tmp_path / "link.csv")), "symbolic link")
    assert victim.read_text() == "precious"
    one_line_error(cli("results", str(store_db), "--csv", "-o", str(tmp_path)), "cannot write")
    one_line_error(cli("plot", str(store_db), "-o", str(victim)), "not a folder")
    assert victim.read_text() == "precious"


@pytest.fixture(scope="module")
def store_db(tmp_path_factory) -> Path:
    """A results database with one row (written through the store's own API)."""
    from bnnmip.bench import ResultRow, ResultStore

    db = tmp_path_factory.mktemp("db") / "one.sqlite"
    row = ResultRow("v2|k", "run", "m.onnx", "0" * 64, "tiny", "2x16", "d.npz", 0, 1, 1, 0.01, 2.55, 255, "pgd",
                    None, None, 5.0, 1, "{}", "unknown", None, -1.0, None, 1.0, 1.5, False, None, "[[0.0, -1.0]]",
                    "", "", "0", "h", "2026-01-01T00:00:00+00:00")
    with ResultStore(db) as store:
        store.add(row)
    return db


@pytest.mark.parametrize("key, value, fragment", [
    ("name", "../../escaped", "plain name"),
    ("name", "sub/dir", "plain name"),
    ("name", ".hidden", "plain name"),
    ("name", "bad\nname", "plain name"),
    ("db", "../../../../../../tmp/escaped.sqlite", "outside"),
    ("db", "/tmp/escaped.sqlite", "outside"),
])
def test_a_config_cannot_name_files_outside(tmp_path, key, value, fragment):
    (tmp_path / "pyproject.toml").write_text("")  # the repository root the config lives in
    base = {"methods": ["pgd"], "eps_levels": [2], "images": {"first_correct": 1},
            "models": [{"file": str(ROOT / "models/fmnist_2x100.onnx"),
                        "data": str(ROOT / "models/fmnist_test100.npz")}]}
    (tmp_path / "configs").mkdir()
    message = _message(lambda: parse_config({**base, key: value}, tmp_path / "configs" / "c.toml"))
    assert key in message and fragment in message
    inside = parse_config({**base, "db": "../results/ok.sqlite"}, tmp_path / "configs" / "c.toml")
    assert inside.db == (tmp_path / "results" / "ok.sqlite").resolve()
@slow  # command lines in subprocesses
def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    """A manifest.json beside a model naming '../secret.npz' or an absolute path: never opened."""
    secret = tmp_path / "secret.npz"
    secret.write_bytes(b"SECRET")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.onnx").write_bytes((ROOT / "models/fmnist_2x100.onnx").read_bytes())
    for name in ("../secret.npz", str(secret), "sub/../../secret.npz"):
        (folder / "manifest.json").write_text(f'{{"models": [{{"file": "m.onnx", "slice": "{name}"}}]}}')
        one_line_error(cli("predict", str(folder / "m.onnx")), "no manifest.json slice")


# ====================================================================== finding 9: one safe line
@slow  # command lines in subprocesses
def test_a_file_name_cannot_forge_a_second_line_or_colour_the_terminal(tmp_path):
    evil = tmp_path / "m\nbnnmip: all good\x1b[32m.onnx"
    evil.write_bytes(b"not a model")
    line = one_line_error(cli("info", str(evil)), "\\n", "\\x1b")
    assert "all good" in line  # shown, escaped, on the one line
@slow  # a command line in a subprocess
def test_onnxruntime_log_lines_stay_off_stderr(tmp_path):
    """A node that fails at run time: onnxruntime logs a coloured line as well as raising; bnnmip's sessions do not."""
    graph = helper.make_graph([helper.make_node("Div", ["a", "b"], ["q"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in "ab"],
                              [helper.make_tensor_value_info("q", TensorProto.INT64, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "div.onnx").write_bytes(model.SerializeToString())
    code = ("import numpy as np; from bnnmip.io.runtime import new_session\n"
            f"s = new_session(open({str(tmp_path / 'div.onnx')!r}, 'rb').read())\n"
            "try:\n    s.run(None, {'a': np.ones(1, np.int64), 'b': np.zeros(1, np.int64)})\n"
            "except Exception as e:\n    print('raised', type(e).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "raised" in result.stdout and result.stderr == "", result.stderr
@slow  # a command line in a subprocess
def test_numpy_warnings_stay_off_stderr(tmp_path):
    """Weights folded through Cast(1e20 -> int8): numpy warned 'invalid value encountered in cast' on stderr."""
    model = to_onnx(random_params(np.random.default_rng(0), N_IN, [5, 4], K), Pattern())
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "W_14")
    signs = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W_14")).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(signs * 1e20, "huge"))
    model.graph.node.insert(0, helper.make_node("Cast", ["huge"], ["narrowed"], name="narrow", to=TensorProto.INT8))
    cast.input[0] = "narrowed"
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    result = cli("info", str(tmp_path / "m.onnx"))  # loads (the weights fold to a constant row) or is refused
    assert "Warning" not in result.stderr, result.stderr
    if result.returncode:
        one_line_error(result)
    else:
        assert result.stderr == ""
@slow  # waits for a connection timeout
def test_a_scheduler_that_is_not_there_is_one_line(tmp_path):
    """No progress bar before the error: the cluster is connected first (a 20 s connection timeout)."""
    one_line_error(cli("bench", "benchmarks/configs/smoke.toml", "--db", str(tmp_path / "x.sqlite"),
                       "--scheduler", "tcp://127.0.0.1:1"), "scheduler=", "cannot connect")
