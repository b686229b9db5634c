"""Smoke test of ``benchmarks/forward.py`` (bnnmip against single-threaded onnxruntime) on small batches."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, slow


@slow  # a benchmark run in a subprocess
def test_forward_benchmark_quick(tmp_path):
    out = tmp_path / "forward.json"
    result = subprocess.run([sys.executable, "benchmarks/forward.py", "--quick", "--pause", "0", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert {tuple(line[:2]) for line in lines if line[:1] in (["fmnist_2x100"], ["mnist_3x100"])} == {
        (model, n) for model in ("fmnist_2x100", "mnist_3x100") for n in ("1", "16", "600")}
    assert "ratio = onnxruntime time / bnnmip time" in result.stdout and "(1 thread)" in result.stdout
    assert "XNOR-popcount" in result.stdout  # the popcount product was checked equal and timed
    numbers = json.loads(out.read_text())
    assert [(r["model"], r["n"]) for r in numbers["forward"]] == [
        (model, n) for model in ("fmnist_2x100", "mnist_3x100") for n in (1, 16, 600)]
    assert all(r["agree"] == r["n"] and r["ratio"] > 0 for r in numbers["forward"])
    assert [(r["arch"], r["n"], r["hidden_layers"]) for r in numbers["popcount"]] == [
        ("2x100", 1, 1), ("2x100", 16, 1), ("2x100", 600, 1), ("3x100", 1, 2), ("3x100", 16, 2), ("3x100", 600, 2)]
