"""The ``attack``, ``export`` and ``minimal-eps`` commands: output, exit status, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time

import highspy
import numpy as np
import pytest

from bnnmip.cli import main
from bnnmip.io.onnx_writer import random_params, save_onnx
from tests.helpers import MODELS, printed_table, slow

MODEL = str(MODELS / "fmnist_2x100.onnx")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
@slow  # the README's attack in a subprocess (test_cli_ux runs one in the fast set)
def test_the_readme_command_works_and_is_quick(tmp_path):
    """``bnnmip attack models/fmnist_2x100.onnx --index 0 --eps 2/255 --save out``, as a user runs it."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bnnmip.cli", "attack", MODEL, "--index", "0", "--eps", "2/255",
                           "--save", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    rows = printed_table(done.stdout)
    assert rows["status"] == "adversarial" and rows["onnxruntime"].startswith("confirmed"), done.stdout
    assert rows["method"] == "best / highs" and rows["label"] == "9" and rows["adv_label"] != "9"
    assert float(rows["max"].split()[-1]) <= 2 / 255 * (1 + 1e-6)  # the 'max |dx|' row, printed to 6 digits
    assert (tmp_path / "out" / "triptych.png").is_file()
    assert elapsed < 60, f"{elapsed:.1f} s"


def test_attack_milp_with_options(capsys):
    code, out, err = run(capsys, "attack", MODEL, "--index", "0", "--eps", "3/255", "--method", "milp",
                         "--target", "7", "--time-limit", "30")
    assert code == 0, err
    rows = printed_table(out)
    assert rows["status"] == "adversarial" and rows["onnxruntime"].startswith("confirmed") and rows["target"] == "7"
    assert rows["adv_label"] == "7" and rows["method"] == "milp / highs" and rows["image"].startswith("#0 of")


@pytest.mark.parametrize("backend", ["scip", "cvxpy"])
def test_attack_with_other_backends(capsys, tiny, backend):
    model, data = tiny
    for eps in ("2/255", "60/255"):
        code, out, err = run(capsys, "attack", model, "--data", data, "--index", "0", "--eps", eps, "--method", "milp",
                             "--backend", backend, "--time-limit", "30", "--allow-misclassified")
        assert code == 0, err
        rows = printed_table(out)
        assert rows["method"] == f"milp / {backend}"
        assert rows["status"] in ("robust", "adversarial"), out
        assert rows.get("proof", rows.get("onnxruntime", "")).startswith(("MILP", "confirmed")), out


def test_attack_continuous_and_lp_bounds(capsys):
    code, out, err = run(capsys, "attack", MODEL, "--index", "1", "--eps", "0.001", "--method", "milp",
                         "--continuous", "--bounds", "lp", "--time-limit", "20")
    assert code == 0, err
    assert printed_table(out)["status"] in ("robust", "adversarial", "unknown")


def test_export_writes_a_model_solvers_read(capsys, tmp_path):
    for suffix in (".mps", ".lp"):
        path = tmp_path / f"attack{suffix}"
        code, out, err = run(capsys, "export", MODEL, "--index", "0", "--eps", "2/255", "--target", "3",
                             "-o", str(path))
        assert code == 0, err
        rows = printed_table(out)
        n_rows = int(rows["model"].split()[0])
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.readModel(str(path))
        assert h.getNumRow() == n_rows and rows["wrote"].startswith(str(path))
        assert "units fixed by interval bounds" in rows["fixed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 6-input BNN and a data file of 3 'images' (uint8 levels) for it."""
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(5)
    save_onnx(random_params(rng, 6, [6, 5], 3), folder / "tiny.onnx")
    images = rng.integers(0, 256, size=(3, 6)).astype(np.uint8)
    np.savez(folder / "tiny.npz", images=images, labels=np.zeros(3, np.uint8))
    return str(folder / "tiny.onnx"), str(folder / "tiny.npz")


def test_minimal_eps(capsys, tiny):
    model, data = tiny
    code, out, err = run(capsys, "minimal-eps", model, "--data", data, "--index", "1", "--time-limit", "60",
                         "--allow-misclassified")
    assert code == 0, err
    rows = printed_table(out)
    assert "proven robust" in rows["minimal"] or "no radius" in rows["minimal"], out
    if "proven robust" in rows["minimal"]:
        assert rows["onnxruntime"].startswith("confirmed")


@pytest.mark.parametrize("argv, message", [
    (["attack", MODEL, "--index", "100", "--eps", "0.02"], "--index 100"),
    (["attack", MODEL, "--index", "0", "--eps", "0.02", "--target", "9", "--method", "milp"], "target=9"),
    (["attack", MODEL, "--index", "0", "--eps", "-1", "--method", "milp"], "eps"),
    (["attack", MODEL, "--index", "0", "--eps", "0.02", "--method", "pgd", "--bounds", "lp"], "--bounds lp"),
    (["attack", MODEL, "--index", "0", "--eps", "0.02", "--time-limit", "0"], "time_limit"),
    (["attack", "no/such/model.onnx", "--index", "0", "--eps", "0.02", "--data", str(MODELS / "fmnist_test100.npz")],
     "no/such/model.onnx"),
    (["export", MODEL, "--index", "0", "--eps", "0.02", "--target", "3", "-o", "model.txt"], "suffix"),
    (["export", MODEL, "--index", "0", "--eps", "0.02", "--target", "3", "-o", "/no/such/dir/m.mps"], "does not exist"),
    (["minimal-eps", MODEL, "--index", "0", "--levels", "0"], "levels"),
])
def test_errors_are_one_line_with_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("bnnmip: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def test_a_malformed_eps_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", MODEL, "--index", "0", "--eps", "two"])
    assert exit_info.value.code == 2
    assert "invalid eps 'two'" in capsys.readouterr().err
