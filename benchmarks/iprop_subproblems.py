"""IProp's ±1-layer subproblems: the native local search against the exact MILP (HiGHS, CP-SAT) — issue 12.

    python benchmarks/iprop_subproblems.py                    # 2x100, 2x500, 4x100; 25 subproblems each
    python benchmarks/iprop_subproblems.py --arch 2x100 --count 5 --backends highs

Runs IProp (native solvers) on the first correctly classified Fashion-MNIST test image and, at each
±1-layer subproblem it meets, also solves the same problem exactly (:class:`BinaryMilp`: the
layer-local objective Phi with partial credit, flip costs and the budget S) with each backend.
Reports per architecture the mean value of the native solutions over the exact optimum, how
often the native solution is optimal, and milliseconds per solve.  A backend that hits its time
limit reports its incumbent (and is counted as not optimal).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bnnmip
from bnnmip.attacks import iprop as iprop_module
from bnnmip.attacks.iprop_layers import BinaryMilp
from bnnmip.attacks.iprop_local import BETA, phi
from bnnmip.attacks.tracker import Tracker
from bnnmip.box import input_box

ROOT = Path(__file__).resolve().parents[1]


class _Recording(iprop_module._IProp):
    """IProp that also solves every ±1-layer subproblem exactly with each backend."""

    def __init__(self, *args, backends, limit, count, **kwargs):
        super().__init__(*args, **kwargs)
        self.backends, self.limit, self.count = backends, limit, count
        self.exact = {}
        self.records = []  # (native value, native ms, {backend: (value, ms)})

    def _solve_binary(self, k, inp, acts, goals, S, movable, cost, deadline):
        t = time.perf_counter()
        new = super()._solve_binary(k, inp, acts, goals, S, movable, cost, deadline)
        native_ms = 1000 * (time.perf_counter() - t)
        if len(self.records) < self.count:
            value = self._value(k, inp, new, goals, cost)
            exact = {}
            for backend in self.backends:
                model = self.exact.setdefault((k, backend), BinaryMilp(self.layers[k], backend, True, None, 0.0))
                t = time.perf_counter()
                sol = model.solve(inp, acts.post[k][0], goals.weight, goals.desired, S, self.limit, movable, None,
                                  cost, BETA)
                exact[backend] = (self._value(k, inp, sol, goals, cost), 1000 * (time.perf_counter() - t))
            self.records.append((value, native_ms, exact))
        return new

    def _value(self, k, inp, new, goals, cost) -> float:
        if new is None:
            return 0.0
        stage = self.native[k]
        r, w, e = stage.weighted(inp, goals)
        return float(phi(e * stage.s(new - inp), r, w).sum() - cost[new != inp].sum())


def measure(arch: str, eps_levels: int, count: int, backends: list[str], limit: float, seconds: float):
    net = bnnmip.load_onnx(ROOT / "models" / f"fmnist_{arch}.onnx", levels=255)
    data = bnnmip.datasets.load_npz(ROOT / "models" / "fmnist_test100.npz")
    X = data.inputs()
    x = X[int(np.flatnonzero(net.predict(X) == data.labels)[0])]
    box = input_box(net, x, eps_levels / 255)
    tracker = Tracker(net, x, eps_levels / 255, box)
    state = _Recording(net, tracker, box, "local", "highs", True, None, np.random.default_rng(0), 0.3, 0.0,
                       backends=backends, limit=limit, count=count)
    state.run(x, time.perf_counter() + seconds + count * limit * len(backends), None)
    return state.records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["2x100", "2x500", "4x100"])
    parser.add_argument("--eps-levels", type=int, default=2)
    parser.add_argument("--count", type=int, default=25, help="subproblems per architecture")
    parser.add_argument("--backends", nargs="+", default=["highs", "cpsat"])
    parser.add_argument("--limit", type=float, default=10.0, help="seconds per exact solve")
    args = parser.parse_args(argv)
    print(f"{'arch':<7}{'n':>4}  {'native/optimum':>15}{'native optimal':>15}{'native ms':>10}  "
          + "  ".join(f"{b + ' ms':>10}{b + ' gap>0':>12}" for b in args.backends))
    for arch in args.arch:
        records = measure(arch, args.eps_levels, args.count, args.backends, args.limit, 5.0)
        if not records:
            print(f"{arch:<7}   0  (no ±1-layer subproblem met)")
            continue
        native = np.array([r[0] for r in records])
        best = np.array([max(r[0], *(v for v, _ in r[2].values())) for r in records])
        ratio = native.sum() / best.sum() if best.sum() > 0 else 1.0
        optimal = np.mean(native >= best - 1e-9)
        cells = []
        for b in args.backends:
            ms = np.mean([r[2][b][1] for r in records])
            short = np.mean([r[2][b][0] < bb - 1e-9 for r, bb in zip(records, best)])
            cells.append(f"{ms:>10.1f}{100 * short:>11.0f}%")
        native_ms = np.mean([r[1] for r in records])
        head = f"{arch:<7}{len(records):>4}  {ratio:>15.3f}{100 * optimal:>14.0f}%{native_ms:>10.2f}  "
        print(head + "  ".join(cells), flush=True)
    print("native/optimum: total native value over the best value any solver found (Phi minus flip costs);\n"
          "gap>0: share of subproblems where that solver ended below the best found (time limit).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
