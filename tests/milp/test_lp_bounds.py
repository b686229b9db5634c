"""LP-tightened bounds are sound: inside the interval bounds, around every reachable pre-activation,
and the attack's verdicts and optima do not change with them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bnnmip.bounds import interval_bounds_from_box
from bnnmip.box import input_box
from bnnmip.milp.lp_bounds import tighten_bounds
from bnnmip.timing import Deadline
from tests.helpers import sample, shipped_inputs, shipped_net
from tests.helpers.milp_nets import cached_case, check_attacks, check_optimum, continuous_case


def assert_sound(net, box, points: np.ndarray, where: str) -> list:
    """LP bounds inside interval bounds, containing the pre-activations of ``points`` (inputs in the box)."""
    interval = interval_bounds_from_box(net, box)
    lp = tighten_bounds(net, box, interval)
    pre = net.forward(points).pre
    for k, (a, b) in enumerate(zip(interval, lp)):
        assert np.all(b.lower >= a.lower) and np.all(b.upper <= a.upper), f"{where}: stage {k} looser than interval"
        assert np.all(a.fixed[a.fixed != 0] == b.fixed[a.fixed != 0]), f"{where}: stage {k} unfixed a unit"
        assert np.all(pre[k] >= b.lower) and np.all(pre[k] <= b.upper), f"{where}: stage {k} misses a reachable value"
        on = np.where(pre[k] >= net.threshold_stages[k].threshold, 1, -1)
        fixed = b.fixed != 0
        assert np.all(on[:, fixed] == b.fixed[fixed]), f"{where}: stage {k} fixed a unit that changes sign"
    return lp


@pytest.mark.parametrize("seed", sample(range(60), range(0, 60, 6)))
def test_lp_bounds_contain_every_grid_point(seed, tmp_path):
    c = cached_case(seed)
    for r in (1, 2):
        box = input_box(c.net, c.x, r * c.step)
        inside = np.all((c.grid >= box.k_lower) & (c.grid <= box.k_upper), axis=1)
        # Grid points spelled as the box spells them (k * step; k / levels may differ in the last bit).
        assert_sound(c.net, box, c.grid[inside] * box.step, f"{c.describe()}, radius {r}")


@pytest.mark.parametrize("seed", sample(range(0, 60, 2), range(0, 60, 12)))
def test_verdicts_and_optima_do_not_change_with_lp_bounds(seed, tmp_path):
    c = cached_case(seed)
    check_attacks(c, "highs", bounds="lp")
    check_optimum(c, "highs", bounds="lp")


@pytest.mark.parametrize("seed", sample(range(20), range(5)))
def test_lp_bounds_contain_sampled_continuous_points(seed, tmp_path):
    net, x = continuous_case(seed, tmp_path, real_first_layer=seed % 3 == 2)
    box = input_box(net, x, 0.3)
    rng = np.random.default_rng(seed)
    assert_sound(net, box, rng.uniform(box.lower, box.upper, size=(5000, len(x))), f"continuous seed {seed}")


def test_lp_bounds_on_a_shipped_model():
    """fmnist_2x100, radius 1/255: tighter somewhere, still around 3,000 sampled grid points of the box."""
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    box = input_box(net, x, 1 / 255)
    rng = np.random.default_rng(0)
    k = rng.integers(box.k_lower, box.k_upper + 1, size=(3000, len(x)))
    lp = assert_sound(net, box, k * box.step, "fmnist_2x100 image 0")
    interval = interval_bounds_from_box(net, box)
    assert sum(b.n_free for b in lp) < sum(b.n_free for b in interval)
    assert np.all(lp[1].upper - lp[1].lower <= interval[1].upper - interval[1].lower)


def test_a_past_deadline_keeps_interval_bounds():
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    box = input_box(net, x, 1 / 255)
    interval = interval_bounds_from_box(net, box)
    t0 = time.perf_counter()
    late = tighten_bounds(net, box, interval, deadline=Deadline(time.perf_counter(), time.perf_counter()))
    assert time.perf_counter() - t0 < 0.5
    for a, b in zip(interval, late):
        np.testing.assert_array_equal(a.lower, b.lower)
        np.testing.assert_array_equal(a.fixed, b.fixed)
