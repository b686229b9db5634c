"""bnnmip.milp.formulation: ``attack_milp`` returns the model together with its inverse map."""

from __future__ import annotations

import numpy as np
import pytest

from bnnmip import AttackModel, MilpModel, attack_milp
from bnnmip.milp.encoding import AttackEncoding
from tests.helpers.milp_nets import cached_case

SEEDS = [0, 1, 3, 6]  # input binarization, a real first layer, ±1 first layers (two and three layers)


@pytest.mark.parametrize("seed", SEEDS)
def test_attack_milp_returns_the_model_and_its_encoding(seed):
    c = cached_case(seed)
    r = c.min_flip_radius() or c.levels
    target = next(t for t in range(c.net.n_classes) if t != c.label)
    model = attack_milp(c.net, c.x, r * c.step, target)
    assert isinstance(model, AttackModel) and isinstance(model, MilpModel)
    enc = model.encoding
    assert isinstance(enc, AttackEncoding)
    assert model.info["encoding"] is enc  # the alias kept for one release
    assert (enc.label, enc.target, enc.eps) == (c.label, target, r * c.step) and enc.n_cols == model.num_cols
    # The clean input, encoded: a feasible point whose objective is its exact logit gap, decoded back to itself.
    values = enc.encode(c.x)
    assert model.violation(values) <= 1e-9
    logits = c.net.logits(c.x)[0]
    assert model.evaluate(values) == pytest.approx(logits[target] - logits[c.label], abs=1e-9)
    np.testing.assert_allclose(enc.decode(values), c.x, rtol=0, atol=1e-12)


def test_the_encoding_survives_a_relaxation():
    c = cached_case(SEEDS[0])
    model = attack_milp(c.net, c.x, c.step, next(t for t in range(c.net.n_classes) if t != c.label))
    relaxed = model.relaxed()
    assert relaxed.encoding is model.encoding and relaxed.info["encoding"] is model.encoding
