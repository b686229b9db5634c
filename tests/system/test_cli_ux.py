"""The command line as a new user meets it (issue 14), each run in a subprocess: honest radii, verdict
lines that say what backs them, misclassified images and mismatched data flagged, results saved to a
folder, a live progress line on long solves (and a quiet Python API), clean help.

``pytest -q`` runs the Python-API checks and a few command lines; the rest, each several subprocesses
of a second or more, are slow."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import bnnmip
from bnnmip.attacks import attack
from bnnmip.io.onnx_writer import random_params, save_onnx
from tests.helpers import ROOT, one_line_error, printed_table, shipped_inputs, shipped_net, slow

MODEL = "models/fmnist_2x100.onnx"
COMMANDS = ("info", "predict", "attack", "export", "minimal-eps", "bench", "results", "plot")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnmip", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 6-input BNN whose labels are its own predictions, and the data file for it."""
    folder = tmp_path_factory.mktemp("ux")
    rng = np.random.default_rng(5)
    save_onnx(random_params(rng, 6, [6, 5], 3), folder / "tiny.onnx")
    net = bnnmip.load_onnx(folder / "tiny.onnx")
    images = rng.integers(0, 256, size=(3, 6)).astype(np.uint8)
    np.savez(folder / "tiny.npz", images=images, labels=net.predict(images / 255.0).astype(np.uint8))
    return str(folder / "tiny.onnx"), str(folder / "tiny.npz")


# ---------------------------------------------------------------------------------------------- radii
@slow  # several command lines in subprocesses
def test_the_radius_is_printed_as_grid_steps():
    asked = cli("attack", MODEL, "--index", "0", "--eps", "0.02", "--method", "pgd", "--time-limit", "5")
    assert asked.returncode == 0, asked.stderr
    assert printed_table(asked.stdout)["eps"] == "5/255 = 0.0196 (asked 0.02)"
    steps = cli("attack", MODEL, "--index", "0", "--eps-steps", "5", "--method", "pgd", "--time-limit", "5")
    assert steps.returncode == 0, steps.stderr
    assert printed_table(steps.stdout)["eps"] == "5/255 = 0.0196"
    assert float(printed_table(steps.stdout)["max"].split()[-1]) <= 5 / 255 + 1e-12  # 'max |dx|'


@slow  # several command lines in subprocesses
def test_a_radius_below_one_step_is_refused_unless_allowed():
    one_line_error(cli("attack", MODEL, "--index", "0", "--eps", "0.001"),
                   "--eps 0.001", "below one grid step (1/255 = 0.00392)", "--allow-zero")
    one_line_error(cli("attack", MODEL, "--index", "0", "--eps", "0"), "--eps 0", "--allow-zero")
    allowed = cli("attack", MODEL, "--index", "0", "--eps", "0.001", "--allow-zero", "--method", "milp")
    assert allowed.returncode == 0, allowed.stderr
    table = printed_table(allowed.stdout)
    assert table["eps"] == "0/255 = 0 (asked 0.001)" and table["status"] == "robust"


@slow  # several command lines in subprocesses
def test_a_radius_beyond_the_input_range_is_refused():
    one_line_error(cli("attack", MODEL, "--index", "0", "--eps", "2"), "--eps 2", "larger than the input range [0, 1]")
    one_line_error(cli("attack", MODEL, "--index", "0", "--eps-steps", "300"), "--eps-steps 300", "input range")
    one_line_error(cli("attack", MODEL, "--index", "0", "--eps-steps", "2", "--continuous"), "--eps-steps", "grid")


def test_the_python_api_says_which_radius_it_searched():
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    result = attack(net, x, 0.02, method="pgd", time_limit=2)
    assert result.radius.steps == 5 and result.radius.value == pytest.approx(5 / 255)
    assert str(result.radius) == "5/255 = 0.0196" and "asked 0.02" in result.summary()
    continuous = attack(shipped_net("fmnist_2x100"), x, 0.02, method="pgd", time_limit=1)
    assert continuous.radius.steps is None and continuous.radius.value == 0.02


# ---------------------------------------------------------------------------------------------- verdicts
@slow  # several command lines in subprocesses
def test_a_proof_says_what_proved_it_and_a_flip_who_confirmed_it(tiny):
    model, data = tiny
    seen = set()
    for eps in ("1/255", "2/255", "200/255"):
        done = cli("attack", model, "--data", data, "--index", "0", "--eps", eps, "--method", "milp")
        assert done.returncode == 0, done.stderr
        table = printed_table(done.stdout)
        assert "verified" not in table, done.stdout
        if table["status"] == "robust":
            assert table["proof"].startswith("MILP (HiGHS): every target's dual bound below 0 (largest -")
            assert "onnxruntime" not in table
        else:
            assert table["status"] == "adversarial" and table["onnxruntime"].startswith("confirmed (label")
            assert "proof" not in table
        seen.add(table["status"])
    assert seen == {"robust", "adversarial"}


# ---------------------------------------------------------------------------------------------- images and data
@slow  # several command lines in subprocesses
def test_a_misclassified_image_is_refused_unless_allowed():
    for command in (["attack", MODEL, "--index", "17", "--eps", "2/255"], ["minimal-eps", MODEL, "--index", "17"]):
        one_line_error(cli(*command), "--index 17", "misclassified (true class 4, the network predicts 6)",
                       "--allow-misclassified")
    allowed = cli("attack", MODEL, "--index", "17", "--eps", "2/255", "--method", "pgd", "--time-limit", "2",
                  "--allow-misclassified")
    assert allowed.returncode == 0, allowed.stderr
    assert printed_table(allowed.stdout)["image"] == "#17 of fmnist_test100 (true class 4, predicted 6)"


@slow  # a command line in a subprocess
def test_data_from_another_dataset_is_warned_about():
    other = cli("predict", MODEL, "--data", "models/mnist_test1000.npz")
    assert other.returncode == 0, other.stderr
    assert other.stderr.strip() == ("bnnmip: warning: models/fmnist_2x100.onnx was trained on fmnist "
                                    "(models/manifest.json), but models/mnist_test1000.npz holds mnist images")
    own = cli("predict", MODEL, "--data", "models/fmnist_test100.npz")
    assert own.returncode == 0 and own.stderr == ""


# ---------------------------------------------------------------------------------------------- --save
def test_attack_saves_what_it_found(tmp_path):
    folder = tmp_path / "run"
    done = cli("attack", MODEL, "--index", "0", "--eps", "0.02", "--save", str(folder))
    assert done.returncode == 0, done.stderr
    assert printed_table(done.stdout)["saved"].count(str(folder)) == 4
    record = json.loads((folder / "result.json").read_text())
    assert record["model"] == MODEL and record["index"] == 0 and record["status"] == "adversarial"
    assert record["radius"]["steps"] == 5 and record["onnxruntime"]["confirmed"] is True
    x, x_adv = np.load(folder / "x.npy"), np.load(folder / "x_adv.npy")
    net = shipped_net("fmnist_2x100")
    assert x_adv.shape == (784,) and np.abs(x_adv - x).max() <= 5 / 255 + 1e-12
    assert int(net.predict(x_adv)[0]) == record["adv_label"] != record["label"] == int(net.predict(x)[0])
    png = (folder / "triptych.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 200_000


def test_minimal_eps_saves_and_explains(tiny, tmp_path):
    model, data = tiny
    done = cli("minimal-eps", model, "--data", data, "--index", "1", "--save", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = printed_table(done.stdout)
    assert table["grid"] == "255 levels, step 1/255 = 0.00392"
    assert all(part.startswith("r=") and part.endswith(" s)") for part in table["decisions"].split(", "))
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] in ("exact", "robust") and record["decisions"]
    if record["status"] == "exact":
        assert table["onnxruntime"].startswith("confirmed") and (tmp_path / "triptych.png").is_file()
        assert np.load(tmp_path / "x_adv.npy").shape == (6,)
        if record["steps"] > 1:
            assert table["proof"].startswith(f"radius {record['steps'] - 1}: MILP (HiGHS)")


def test_a_robust_result_saves_without_an_adversarial_input(tmp_path):
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    result = attack(net, x, 0.0, method="milp", time_limit=10)
    assert result.status == "robust"
    written = result.save(tmp_path / "robust")
    assert sorted(p.name for p in written) == ["result.json", "x.npy"]
    assert json.loads(written[0].read_text())["proof"].startswith("MILP (HiGHS)")


# ---------------------------------------------------------------------------------------------- progress
@slow  # waits on a long solve
def test_a_long_solve_shows_a_live_progress_line():
    done = cli("attack", MODEL, "--index", "0", "--eps-steps", "1", "--method", "milp", "--time-limit", "4",
               "--progress")
    assert done.returncode == 0, done.stderr
    line = re.search(r"MILP target \d+ \(\d+/9\) \| incumbent -?[\d.]+ \| bound (-|-?[\d.e+-]+) \| (\d+\.\d) s",
                     done.stderr)
    assert line is not None and float(line.group(2)) >= 1.5, done.stderr
    assert "status" in printed_table(done.stdout)
    quiet = cli("attack", MODEL, "--index", "0", "--eps-steps", "1", "--method", "milp", "--time-limit", "2",
                "--no-progress")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_the_python_api_is_quiet_unless_asked(capfd):
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    attack(net, x, 1 / 255, method="milp", time_limit=2)
    assert capfd.readouterr().err == ""
    states = []
    attack(net, x, 1 / 255, method="milp", time_limit=2, progress=states.append)
    assert states and states[0].stage == "MILP: bounds" and any(s.stage == "MILP target 7 (1/9)" for s in states)
    assert any(s.bound is not None for s in states) and all(s.incumbent is not None for s in states[1:])
    assert [s.elapsed for s in states] == sorted(s.elapsed for s in states)


# ---------------------------------------------------------------------------------------------- help
@slow  # the help of every command, each in a subprocess
def test_help_is_clean_and_complete():
    top = cli("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert f"\n    {command}" in top.stdout, command
        text = cli(command, "--help").stdout
        assert "`" not in text and text.startswith(f"usage: bnnmip {command}"), command
    assert "`" not in top.stdout
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"bnnmip {bnnmip.__version__}"
