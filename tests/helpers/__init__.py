"""What the test folders share: the repository's paths, the shipped models and slices, random BNNs
written to ONNX, the benchmark scripts loaded as modules, the ``slow`` marker and samples of long
parametrizations, readers of what the command line printed, and the backend registry as pytest
parameters.

Every shared piece of the suite is a plain function or constant here (or in
:mod:`tests.helpers.milp_nets`, the tiny networks whose truth brute force knows), imported as
``from tests.helpers import ...``; fixtures stay in the file that uses them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from bnnmip import AttackModel, attack_milp, load_onnx
from bnnmip.backends import backend_names, get_backend
from bnnmip.io.datasets import load_npz
from bnnmip.io.onnx_writer import BnnParams, Pattern, save_onnx
from bnnmip.network import BNN

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BENCHMARKS = ROOT / "benchmarks"
FIXTURES = ROOT / "tests" / "fixtures"  # committed ONNX files, with the scripts that make them
MANIFEST: list[dict] = json.loads((MODELS / "manifest.json").read_text())["models"]
"""The entries of ``models/manifest.json`` (one per shipped model)."""

slow = pytest.mark.slow
"""Left out of ``pytest -q`` (the development run), run by ``pytest -m "slow or not slow"`` (CI): long
samples, benchmark smoke runs, waits on time limits and many subprocesses."""

SOLVER_CHOICES = {"cvxpy": ("HIGHS", "SCIP")}
"""The solvers the suite runs behind a backend whose capabilities include ``solver_choice``
(a backend not listed runs with its default solver only)."""


@functools.cache
def shipped_net(name: str, levels: int | None = None) -> BNN:
    """The shipped model ``models/<name>.onnx`` (loaded once per test process; a BNN is immutable)."""
    return load_onnx(MODELS / f"{name}.onnx", levels=levels)


def shipped_inputs(name: str) -> np.ndarray:
    """The inputs of the shipped slice ``models/<name>.npz`` in [0, 1] (a fresh array: tests may change it)."""
    return load_npz(MODELS / f"{name}.npz").inputs()


def hard_attack_milp() -> tuple[AttackModel, np.ndarray]:
    """fmnist_2x100, image 0, radius 1/255, the closest target: an attack MILP no solver closes in
    seconds, and the clean input as a feasible start (its column values)."""
    net = shipped_net("fmnist_2x100", levels=255)
    x = shipped_inputs("fmnist_test100")[0]
    label = int(net.predict(x)[0])
    logits = net.logits(x)[0]
    target = int(np.argsort(logits[label] - logits)[1])
    model = attack_milp(net, x, 1 / 255, target, label=label)
    return model, model.encoding.encode(x)


def saved_net(params: BnnParams, path: Path, *, levels: int | None = None, pattern: Pattern | None = None) -> BNN:
    """``params`` written to ``path`` as ONNX (in ``pattern``) and loaded back, as a user loads a file."""
    save_onnx(params, path, pattern or Pattern())
    return load_onnx(path, levels=levels)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (loaded once; registered in ``sys.modules`` so that Dask
    and pickle find the functions it defines)."""
    module_name = f"bnnmip_benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def sample(values, fast) -> list:
    """``values`` as pytest parameters, all but those in ``fast`` marked :data:`slow`: the development run
    checks a sample, the full suite every value.  A tuple is the values of several arguments."""
    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=() if v in fast else slow) for v in values]


# ---------------------------------------------------------------------- what the command line printed
def printed_table(out: str) -> dict[str, str]:
    """The ``key   value`` lines of a table the command line printed (a key may hold one space: 'max |dx|'
    is read as 'max')."""
    table = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        table[key] = value.strip()
    return table


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed as bnnmip promises: exit status 2 and one line on stderr (no traceback, no
    terminal escape), holding every needle; that line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnnmip: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- the backend registry
def _routes(needs: str | None) -> list[tuple[str, str | None]]:
    routes = []
    for name in backend_names():
        caps = get_backend(name).capabilities
        if needs is None or getattr(caps, needs):
            solvers = SOLVER_CHOICES.get(name, (None,)) if caps.solver_choice else (None,)
            routes += [(name, solver) for solver in solvers]
    return routes


def backend_routes(needs: str | None = None) -> list[tuple[str, str | None]]:
    """(backend, solver) for every registered backend whose package is installed, one per solver of
    :data:`SOLVER_CHOICES` for a backend with a choice of solver; only those with capability
    ``needs`` if given.  A backend is tested by being registered: nothing here names one (only the
    solvers to run behind a choice of solver)."""
    return [(name, solver) for name, solver in _routes(needs) if get_backend(name).available()]


def backend_params(needs: str | None = None, *, solvers: bool = False) -> list:
    """Every registered backend as pytest parameters (as :func:`backend_routes`, but a backend whose
    package is missing is skipped, not left out): ``(backend, solver)`` with ``solvers``, else
    ``backend`` alone, once per backend."""
    params, seen = [], set()
    for name, solver in _routes(needs):
        if not solvers and name in seen:
            continue
        seen.add(name)
        backend = get_backend(name)
        marks = pytest.mark.skipif(not backend.available(), reason=f"{backend.package} is not installed")
        values = (name, solver) if solvers else (name,)
        params.append(pytest.param(*values, marks=marks, id=f"{name}-{solver}" if solvers else name))
    return params
