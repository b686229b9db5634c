"""Smoke test of ``benchmarks/forward.py`` (the forward-throughput benchmark) on a small batch."""

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
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["2x100"] for line in lines) and any(line.split()[:1] == ["3x100"] for line in lines)
    assert "ratio = bnnmip throughput / onnxruntime throughput" in result.stdout
    assert "XNOR-popcount" in result.stdout  # the popcount product was checked equal and timed
    numbers = json.loads(out.read_text())
    assert [r["arch"] for r in numbers["forward"]] == ["2x100", "3x100"]
    assert all(r["agree"] == r["n"] == 600 and r["ratio"] > 0 for r in numbers["forward"])
    assert [r["hidden_layers"] for r in numbers["popcount"]] == [1, 2]
