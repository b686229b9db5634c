"""A short soak of the results store (issue 15): ``benchmarks/store_soak.py`` for one round.

Two concurrent ``bnnmip bench`` on one database, SIGKILLed, made read-only and locked at random
moments: every job must end exactly once, with the status of a clean run, and no result a
coordinator reported may be missing.  The full soak is ``python benchmarks/store_soak.py``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _soak():
    spec = importlib.util.spec_from_file_location("bnnmip_benchmark_store_soak", ROOT / "benchmarks" / "store_soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_short_soak_ends_every_job_exactly_once_and_loses_nothing(tmp_path, capsys):
    assert _soak().main(["--seconds", "15", "--round-seconds", "15", "--images", "3", "--seed", "3",
                         "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = re.search(r"total: jobs (\d+), rows (\d+), started (\d+), killed (\d+)", out)
    assert total, out
    jobs, rows, started, killed = (int(v) for v in total.groups())
    assert jobs == rows > 0 and started >= 2 and killed >= 1, out
    assert "wrong_status 0, lost 0" in out and "nothing lost: yes" in out
