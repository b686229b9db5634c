"""The MILP benchmark scripts run (``--quick``) and print their tables."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark, sample

BENCHMARKS = [
    ("milp_build", ["ratio H", "2x100", "cvx→S"]),
    ("milp_status", ["adversarial", "highs", "scip", "cvxpy", "median s"]),
    ("milp_lp_bounds", ["interval", "lp", "free per layer"]),
]


@pytest.mark.parametrize("name, expect", sample(BENCHMARKS, BENCHMARKS[:1]))  # the two others attack for seconds
def test_quick_benchmark_runs(name, expect, capsys):
    assert load_benchmark(name).main(["--quick"]) == 0
    out = capsys.readouterr().out
    for text in expect:
        assert text in out, out
