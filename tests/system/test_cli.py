"""The ``bnnmip`` command line (``info`` and ``predict``), run as a user runs it: in a subprocess.

``pytest -q`` starts two subprocesses; the others (each a second or two of imports) are slow."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bnnmip
from tests.helpers import MANIFEST, MODELS, ROOT, one_line_error, slow

BY_FILE = {e["file"]: e for e in MANIFEST}


def bnnmip_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnmip.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_info_prints_the_summary():
    result = bnnmip_cli("info", "models/fmnist_2x100.onnx")
    assert result.returncode == 0, result.stderr
    expected = bnnmip.load_onnx(MODELS / "fmnist_2x100.onnx").summary()
    assert result.stdout.strip() == expected.replace(str(MODELS / "fmnist_2x100.onnx"), "models/fmnist_2x100.onnx")
    assert "layer 2    100 -> 100" in result.stdout and "params" in result.stdout


@slow
@pytest.mark.parametrize("model", ["fmnist_2x100.onnx", "mnist_3x100.onnx"])
def test_predict_defaults_to_the_manifest_slice(model):
    result = bnnmip_cli("predict", f"models/{model}")
    assert result.returncode == 0, result.stderr
    entry = BY_FILE[model]
    accuracy = next(line for line in result.stdout.splitlines() if line.startswith("accuracy"))
    assert float(accuracy.split()[1]) == pytest.approx(entry["slice_accuracy"], abs=5e-5)
    assert entry["slice"].removesuffix(".npz") in result.stdout
    assert "predictions agree with onnxruntime" in result.stdout


def test_predict_with_data_and_limit():
    result = bnnmip_cli("predict", "models/fmnist_2x200.onnx", "--data", "models/fmnist_test100.npz", "--limit", "10")
    assert result.returncode == 0, result.stderr
    assert "10 images" in result.stdout and "10/10 predictions agree" in result.stdout
@slow  # two command lines in subprocesses
def test_missing_model():
    one_line_error(bnnmip_cli("info", "models/no_such_model.onnx"), "no_such_model.onnx", "no such file")
    one_line_error(bnnmip_cli("predict", "models/no_such_model.onnx"))


@slow
def test_not_a_model():
    one_line_error(bnnmip_cli("info", "models/fmnist_test100.npz"), "not an ONNX model")


@slow
def test_missing_data():
    one_line_error(bnnmip_cli("predict", "models/fmnist_2x100.onnx", "--data", "nowhere.npz"), "nowhere.npz")


@slow
def test_console_script_is_installed():
    import shutil

    script = shutil.which("bnnmip")
    if script is None:
        pytest.skip("the bnnmip console script is not on PATH (package not installed with pip)")
    result = subprocess.run([script, "info", "models/fmnist_3x100.onnx"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "layer 3" in result.stdout
