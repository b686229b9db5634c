"""Time limits (issue 7): every method and backend returns within its limit plus 1 s.

The 1 s limit for every method/backend, and 5 s for one, on the shipped 5x100 model (the setup of
``benchmarks/time_limits.py``, which also runs 5 s and 20 s for all of them).
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark, sample

time_limits = load_benchmark("time_limits")


@pytest.fixture(scope="module")
def setup():
    time_limits.warm_up()  # one-time imports are not charged to the first attack
    net, x, _ = time_limits.load()
    return net, x


CASES = [(combo, 1.0) for combo in time_limits.COMBOS] + [("best/highs", 5.0)]


# pytest -q waits on one limit; the full suite on every method and backend.
@pytest.mark.parametrize("combo, limit", sample(CASES, CASES[:1]), ids=[f"{c}-{t:g}s" for c, t in CASES])
def test_attack_returns_within_its_time_limit(setup, combo, limit):
    net, x = setup
    wall, status, own = time_limits.measure(net, x, combo, limit)
    assert wall <= limit + time_limits.SLACK, f"{combo}: {wall:.2f} s for a limit of {limit:g} s ({status})"
    assert own <= wall + 1e-6
