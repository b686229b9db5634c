"""Soundness on a sample of random tiny BNNs (issue 7): no fake adversarial, no false certificate.

The checks are those of ``benchmarks/soundness.py`` (which runs 1,000+ networks): every method and
backend attacks each network; grid boxes are enumerated exhaustively and continuous ones sampled
densely, in bnnmip's exact forward pass and in onnxruntime.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import load_benchmark, slow

soundness = load_benchmark("soundness")

TIME_LIMIT = 0.5  # the networks are tiny: the MILP solves them in milliseconds


SAMPLES = {"grid_bruteforce": (True, range(30)), "continuous_sampling": (False, range(10**6, 10**6 + 10))}


@pytest.fixture(scope="module", params=list(SAMPLES))
def sample(request):
    grid, seeds = SAMPLES[request.param]
    tally = soundness.Tally()
    for seed in seeds:
        tally.merge(soundness.check_network(seed, grid, TIME_LIMIT))
    return request.param, tally


@slow  # 40 networks, every method and backend
def test_sample_of_random_networks_is_sound(sample):
    """No fake adversarial example, no false certificate, no disagreement between the two judges."""
    name, tally = sample
    report = soundness.report(name, tally)
    assert [v for v in tally.violations if ": crash: " not in v] == [], report
    assert tally.judge_disagreements == 0, report
    # The sample must exercise both verdicts the checks are about.
    assert sum(n for (run, status), n in tally.verdicts.items() if status == "adversarial") > 0, report
    assert sum(n for (run, status), n in tally.verdicts.items() if status == "robust") > 0, report


@slow  # the same sample
def test_sample_of_random_networks_never_crashes(sample):
    name, tally = sample
    crashes = [v for v in tally.violations if ": crash: " in v]
    assert crashes == [], soundness.report(name, tally)


def test_the_checks_catch_a_fake_adversarial_and_a_false_certificate(tmp_path):
    """The checker itself: a forged 'adversarial' (the clean input) and a forged 'robust' are caught."""
    inst = next(i for seed in range(50) for i in soundness.make_instances(seed, tmp_path, True)
                if i.target is None and soundness.truth(i)[1].flips(i)[0])
    _, truth = soundness.truth(inst)
    result = soundness.attack(inst.net, inst.x, inst.eps, method="milp", time_limit=5)
    assert result.status == "adversarial"
    assert soundness.check_result(inst, "milp/highs", "milp", result, truth) == []
    result = replace(result, x_adv=inst.x.copy(), verified=True)
    assert any("fake adversarial" in v for v in soundness.check_result(inst, "forged", "milp", result, truth))
    result = replace(result, x_adv=np.clip(inst.x + 2 * inst.eps + 0.01, -1, 2))
    assert any("outside the box" in v for v in soundness.check_result(inst, "forged", "milp", result, truth))
    result = replace(result, status="robust", x_adv=None)
    assert any("false certificate" in v for v in soundness.check_result(inst, "forged", "milp", result, truth))
    assert any("cannot prove" in v for v in soundness.check_result(inst, "forged", "pgd", result, truth))
