"""bnnmip.box: the perturbation box, its grid steps, snapping, membership and random points."""

from __future__ import annotations

import numpy as np
import pytest

from bnnmip import InvalidArgumentError
from bnnmip.box import InputBox, input_box, on_grid
from tests.helpers import shipped_inputs, shipped_net


def grid_box() -> InputBox:
    """Three inputs on the grid of 4 steps over [0, 1]: steps 1..3, 0..1 and 4..4 (a closed input)."""
    k_lower, k_upper = np.array([1, 0, 4]), np.array([3, 1, 4])
    return InputBox(k_lower * 0.25, k_upper * 0.25, k_lower, k_upper, 0.25, 0.0)


def test_steps_and_values_round_trip():
    box = grid_box()
    k = np.array([2.0, 1.0, 4.0])
    np.testing.assert_array_equal(box.from_steps(k), [0.5, 0.25, 1.0])
    np.testing.assert_array_equal(box.to_steps(box.from_steps(k)), k)
    np.testing.assert_array_equal(box.to_steps([0.5 + 1e-12, 0.25 - 1e-12, 1.0]), k)  # float noise: the same steps
    shifted = InputBox(np.zeros(1), np.ones(1), np.array([0]), np.array([8]), 0.25, -1.0)  # grid over [-1, 1]
    assert shifted.from_steps(np.array([4]))[0] == 0.0 and shifted.to_steps(np.array([0.5]))[0] == 6


def test_snap_goes_to_the_nearest_point_of_the_box():
    box = grid_box()
    np.testing.assert_array_equal(box.snap(np.array([0.55, 0.9, 0.0])), [0.5, 0.25, 1.0])
    np.testing.assert_array_equal(box.snap(np.array([0.0, 0.1, 0.6])), [0.25, 0.0, 1.0])
    continuous = InputBox(np.array([0.2, 0.0]), np.array([0.4, 1.0]))
    np.testing.assert_array_equal(continuous.snap(np.array([0.3, 1.5])), [0.3, 1.0])
    np.testing.assert_array_equal(continuous.snap(np.array([-1.0, 0.123])), [0.2, 0.123])


def test_contains_checks_bounds_and_grid():
    box = grid_box()
    assert box.contains([0.5, 0.25, 1.0]) and box.contains([0.75 + 1e-12, 0.0, 1.0])
    assert not box.contains([0.0, 0.25, 1.0])  # below step 1
    assert not box.contains([0.5, 0.5, 1.0])  # above step 1
    assert not box.contains([0.6, 0.25, 1.0])  # inside, off the grid
    continuous = InputBox(np.array([0.2, 0.0]), np.array([0.4, 1.0]))
    assert continuous.contains([0.3333, 1.0]) and not continuous.contains([0.41, 0.5])
    np.testing.assert_array_equal(box.open, [True, True, False])


def test_random_points_lie_in_the_box():
    rng = np.random.default_rng(0)
    box = grid_box()
    points = box.random(rng, 200)
    assert points.shape == (200, 3) and all(box.contains(p) for p in points)
    assert len(np.unique(points[:, 0])) == 3  # every step 1..3 is drawn
    some = box.random(rng, 50, inputs=np.array([0, 2]))
    assert some.shape == (50, 2) and set(np.unique(some[:, 1])) == {1.0}
    continuous = InputBox(np.array([0.2, 0.0]), np.array([0.4, 1.0]))
    points = continuous.random(rng, 500)
    assert all(continuous.contains(p) for p in points) and not on_grid(points[:, 0], 255, (0.0, 1.0)).all()


def test_input_box_reaches_exactly_eps_on_the_grid():
    """eps = 2/255 reaches two steps although 2/255 is not exact in floating point, clipped to [0, 1]."""
    net, x = shipped_net("fmnist_2x100"), shipped_inputs("fmnist_test100")[0]
    box = input_box(net, x, 2 / 255, levels=255)
    k = np.rint(x * 255)
    np.testing.assert_array_equal(box.k_lower, np.maximum(k - 2, 0))
    np.testing.assert_array_equal(box.k_upper, np.minimum(k + 2, 255))
    assert box.on_grid and box.step == 1 / 255 and box.contains(x) and on_grid(box.lower, 255, (0.0, 1.0)).all()
    snapped = box.snap(x)  # an 8-bit image is its own grid point, spelled k * step (k / 255 may differ in the last bit)
    np.testing.assert_array_equal(snapped, k * box.step)
    np.testing.assert_allclose(snapped, x, rtol=0, atol=1e-15)
    plain = input_box(net, x, 2 / 255)  # the network has no grid: a continuous box
    assert not plain.on_grid and plain.contains(np.clip(x + 2 / 255, 0, 1))


def test_input_box_refuses_what_it_cannot_hold():
    net = shipped_net("fmnist_2x100")
    x = np.full(784, 0.5 / 255)  # between two grid points
    with pytest.raises(InvalidArgumentError, match="has no grid point within eps"):
        input_box(net, x, 0.1 / 255, levels=255)
    with pytest.raises(InvalidArgumentError, match="eps=-1"):
        input_box(net, x, -1)
    with pytest.raises(InvalidArgumentError, match="outside the input range"):
        input_box(net, x + 2, 0.1)
    with pytest.raises(InvalidArgumentError, match="levels=0"):
        input_box(net, x, 0.1, levels=0)
