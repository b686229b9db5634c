"""The MILP benchmark scripts run (``--quick``) and print their tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bnnmip_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, expect", [
    ("milp_build", ["ratio H", "2x100", "cvx→S"]),
    ("milp_status", ["adversarial", "highs", "scip", "cvxpy", "median s"]),
    ("milp_lp_bounds", ["interval", "lp", "free per layer"]),
])
def test_quick_benchmark_runs(name, expect, capsys):
    assert load(name).main(["--quick"]) == 0
    out = capsys.readouterr().out
    for text in expect:
        assert text in out, out
