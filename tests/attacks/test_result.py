"""bnnmip.attacks.result: every method returns a frozen :class:`AttackResult` with ``x_best``, ``linf``
and, for an adversarial input, the :class:`OnnxRecheck` behind ``verified``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnnmip import AttackResult, attack
from bnnmip.attacks import METHODS, OnnxRecheck
from tests.helpers.milp_nets import cached_case

SEED = 0  # a tiny grid network with a flip at radius 1


@pytest.fixture(scope="module")
def case():
    c = cached_case(SEED)
    assert c.min_flip_radius() is not None
    return c


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_a_frozen_result_with_its_best_input(case, method):
    eps = case.levels * case.step  # the whole range: a flip exists
    result = attack(case.net, case.x, eps, method=method, time_limit=3)
    assert isinstance(result, AttackResult) and result.method == method
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = "robust"
    assert result.x_best is not None and np.abs(result.x_best - case.x).max() <= eps + 1e-9
    if result.status == "adversarial":
        assert result.linf == pytest.approx(np.abs(result.x_adv - case.x).max(), abs=0)
        assert isinstance(result.check, OnnxRecheck) and result.check.ok and result.verified
        assert result.check.onnx_label == result.adv_label != result.label == result.check.clean_label
        assert result.check.linf == result.linf and "onnxruntime" in result.summary()
    else:
        assert result.x_adv is None and result.linf is None and result.check is None


def test_a_robust_result_has_no_adversarial_fields(case):
    r = case.min_flip_radius()
    result = attack(case.net, case.x, (r - 1) * case.step, method="milp", time_limit=10)
    assert result.status == "robust"
    assert (result.x_adv, result.adv_label, result.linf, result.check) == (None, None, None, None)
    np.testing.assert_array_equal(result.x_best, case.x)  # nothing beat the clean input (radius 0)


@pytest.mark.parametrize("onnx_label, linf, in_range, problem", [
    (3, 0.01, True, "onnxruntime still predicts 3"),
    (5, 0.03, True, "max |dx| 0.03 > eps 0.02"),
    (5, 0.01, False, "values outside the input range"),
])
def test_the_recheck_names_what_failed(onnx_label, linf, in_range, problem):
    check = OnnxRecheck(onnx_label=onnx_label, clean_label=3, linf=linf, eps=0.02, in_range=in_range)
    assert not check.ok and check.describe() == f"NOT confirmed: {problem}"
    good = OnnxRecheck(onnx_label=5, clean_label=3, linf=0.02, eps=0.02, in_range=True)
    assert good.ok and good.describe().startswith("confirmed (label 3 -> 5")
