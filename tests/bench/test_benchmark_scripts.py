"""Smoke runs of the attack and bench benchmarks (the full runs are in benchmarks/, see README); slow:
each runs a benchmark end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import MODELS, load_benchmark

pytestmark = pytest.mark.slow


def tiny_config(folder: Path, methods: list[str], images: int = 1) -> Path:
    path = folder / "tiny.toml"
    path.write_text(f"""\
name = "tiny"
db = "tiny.sqlite"
time_limit = 1.0
threads = 1
levels = 255
methods = {methods!r}
backends = ["highs"]

[images]
first_correct = {images}

[[models]]
file = "{MODELS / 'fmnist_2x100.onnx'}"
eps_levels = [5]
""".replace("'", '"'))
    return path


def test_flip_rate_runs_reports_and_checks_targets(tmp_path, capsys):
    config = tiny_config(tmp_path, ["pgd", "iprop", "iprop+pgd", "milp"])
    out = tmp_path / "out"
    assert load_benchmark("flip_rate").main(["--config", str(config), "--workers", "1", "--out", str(out),
                                   "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "iprop+pgd >= max(pgd, milp)" in printed and "iprop >= 1.3 x pgd in all" in printed
    table = (out / "tiny.md").read_text()
    assert "4 of 4 jobs finished" in table and "milp/highs" in table
    with open(out / "tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["iprop", "iprop+pgd", "milp", "pgd"]
    assert all(r["verified"] == "1" for r in rows if r["status"] == "adversarial")
    # --report runs nothing and gives the same table
    assert load_benchmark("flip_rate").main(["--config", str(config), "--report", "--out", str(out)]) == 0
    assert (out / "tiny.md").read_text() == table


def test_iprop_reuse_quick(capsys):
    assert load_benchmark("iprop_reuse").main(["--quick"]) == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("2x100"))
    in_place, rebuilt, ratio = map(float, line.split()[1:])
    assert in_place > 0 and rebuilt > 0
    # The printed rates are rounded to 0.01: the ratio lies between what their rounding allows.
    low, high = (in_place - 0.005) / (rebuilt + 0.005), (in_place + 0.005) / max(rebuilt - 0.005, 1e-9)
    assert low - 0.005 <= ratio <= high + 0.005
    assert "geometric mean ratio" in printed


def test_bench_scaling_runs_both_cluster_sizes(tmp_path, capsys):
    config = tiny_config(tmp_path, ["pgd"], images=2)
    assert load_benchmark("bench_scaling").main(["--config", str(config)]) in (0, 1)  # 1: under the 1.7x target
    printed = capsys.readouterr().out
    assert "1 worker(s): 2 jobs" in printed and "2 worker(s): 2 jobs" in printed
    assert "ratio 2 workers / 1 worker" in printed


def test_verify_benchmark_quick(tmp_path, capsys):
    """The exact-engine study in miniature: every route, the agreement check, the table."""
    out = tmp_path / "out"
    code = load_benchmark("verify").main(["--quick", "--workers", "1", "--db", str(tmp_path / "v.sqlite"),
                                          "--out", str(out), "--no-progress", "--no-minimal-eps"])
    assert code == 0, capsys.readouterr().err  # 1 would mean two routes disagreed
    table = (out / "verify_quick.md").read_text()
    for route in ("auto", "bab", "cpsat", "enumerate", "milp/highs", "milp/scip"):
        assert f" {route} " in table, route
    assert "DISAGREEMENT" not in table and "UNVERIFIED" not in table
