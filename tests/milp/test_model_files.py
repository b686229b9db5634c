"""Written ``.mps`` and ``.lp`` files read back by HiGHS (``readModel``) and SCIP (``readProblem``) to the
optimum ``MilpModel.solve`` finds, on tiny attack MILPs at every radius, fully fixed ones (no columns)
included."""

from __future__ import annotations

import highspy
import numpy as np
import pyscipopt
import pytest

from bnnmip import attack_milp, load_onnx
from bnnmip.io.onnx_writer import random_params, save_onnx

LIMIT = 30.0


def read_with_highs(path) -> float:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", LIMIT)
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 1e-9)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    h.run()
    assert h.modelStatusToString(h.getModelStatus()) == "Optimal", path
    return h.getInfo().objective_function_value


def read_with_scip(path) -> float:
    s = pyscipopt.Model()
    s.hideOutput()
    s.readProblem(str(path))
    s.setParam("limits/time", LIMIT)
    s.setParam("limits/gap", 0.0)
    s.setParam("limits/absgap", 1e-9)
    s.optimize()
    assert s.getStatus() == "optimal", path
    return s.getObjVal()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Attack MILPs of small random BNNs at radii from 0 (every unit fixed) to the whole input range."""
    folder = tmp_path_factory.mktemp("files")
    models = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        path = folder / f"net{seed}.onnx"
        save_onnx(random_params(rng, 5, [4, 3], 3, real_first_layer=seed % 3 == 1, input_binarization=seed % 3 == 2),
                  path)
        net = load_onnx(path, levels=4)
        x = rng.integers(0, 5, 5) / 4
        label = int(net.predict(x)[0])
        for steps in (0, 1, 4):
            for target in (t for t in range(3) if t != label):
                models.append((f"seed {seed}, radius {steps}/4, target {target}",
                               attack_milp(net, x, steps / 4, target, levels=4)))
    return models


def test_fully_fixed_instances_are_among_them(tiny_models):
    assert any(model.num_cols == 0 for _, model in tiny_models)
    assert any(model.num_cols > 0 for _, model in tiny_models)


def test_both_readers_reach_the_optimum_of_both_files(tiny_models, tmp_path):
    for where, model in tiny_models:
        solution = model.solve("highs", time_limit=LIMIT)
        assert solution.status == "optimal", where
        for suffix in (".mps", ".lp"):
            path = model.write(tmp_path / f"m{suffix}")
            for read in (read_with_highs, read_with_scip):
                value = read(path)
                assert value == pytest.approx(solution.objective, abs=1e-6), \
                    f"{where}, {read.__name__}({suffix}): {value}, solve gives {solution.objective}"
