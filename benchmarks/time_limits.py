#!/usr/bin/env python3
"""Time limits (issue 7): every method and backend returns within its limit plus 1 s.

On the shipped ``models/fmnist_5x100.onnx`` (8-bit input grid), one test image, ε = 3/255,
untargeted, each method/backend gets limits of 1, 5 and 20 s; the wall time of the ``attack``
call is measured (the model is loaded and the solver packages imported beforehand: those are
one-time costs, printed separately).  Options make every method use its whole budget where it
can (``stop_at_flip=False`` for the MILP, unbounded restarts for PGD), so the limit is what stops
it; IProp and the chains stop early only on a verified flip.

    python benchmarks/time_limits.py                  # the full table (about 5 minutes)
    python benchmarks/time_limits.py --limits 1 --combos milp/highs pgd

The table gives the wall time per limit, then the status ('adv', 'rob', 'unk'); a time over the
limit + 1 s is marked with '!'.  Exit status 1 if any run overran.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from bnnmip import load_onnx
from bnnmip.attacks import attack
from bnnmip.io.datasets import load_npz

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fmnist_5x100.onnx"
DATA = ROOT / "models" / "fmnist_test100.npz"
COMBOS = ("milp/highs", "milp/scip", "milp/cvxpy", "pgd", "iprop/highs", "iprop/scip", "iprop+pgd/highs",
          "iprop+pgd/scip", "best/highs", "best/scip")
LIMITS = (1.0, 5.0, 20.0)
SLACK = 1.0  # seconds a run may take beyond its limit
OPTIONS = {"milp": {"stop_at_flip": False}, "pgd": {"restarts": 10**9}}
EPS = 3 / 255
INDEX = 1  # a test image PGD and IProp do not flip at ε = 3/255, so every run uses its budget


def split(combo: str) -> tuple[str, str | None]:
    method, _, backend = combo.partition("/")
    return method, backend or None


def warm_up() -> dict[str, float]:
    """Import the solver packages (a one-time cost not charged to any attack); seconds per package."""
    seconds = {}
    for package in ("highspy", "pyscipopt", "cvxpy"):
        t0 = time.perf_counter()
        importlib.import_module(package)
        seconds[package] = time.perf_counter() - t0
    return seconds


def load(index: int = INDEX):
    """The 5x100 network on the 8-bit grid and test image ``index`` (pixels / 255)."""
    net = load_onnx(MODEL, levels=255)
    data = load_npz(DATA)
    return net, data.inputs()[index], int(data.labels[index])


def measure(net, x, combo: str, limit: float, eps: float = EPS) -> tuple[float, str, float]:
    """(wall seconds of the attack call, status, the result's own time)."""
    method, backend = split(combo)
    kwargs = dict(OPTIONS.get(method, {}), **({"backend": backend} if backend else {}))
    t0 = time.perf_counter()
    result = attack(net, x, eps, method=method, target=None, time_limit=limit, **kwargs)
    return time.perf_counter() - t0, result.status, result.time


def table(rows: dict[str, dict[float, tuple[float, str, float]]], limits) -> str:
    short = {"adversarial": "adv", "robust": "rob", "unknown": "unk"}
    head = f"{'method/backend':<18}" + "".join(f"{f'limit {limit:g} s':>18}" for limit in limits)
    lines = [head, "-" * len(head)]
    for combo, cells in rows.items():
        text = []
        for limit in limits:
            wall, status, _ = cells[limit]
            mark = "!" if wall > limit + SLACK else " "
            text.append(f"{wall:>9.2f} s {short.get(status, status):>4}{mark}")
        lines.append(f"{combo:<18}" + "".join(f"{t:>18}" for t in text))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", type=float, nargs="+", default=list(LIMITS))
    parser.add_argument("--combos", nargs="+", default=list(COMBOS), choices=list(COMBOS))
    parser.add_argument("--index", type=int, default=INDEX, help="test image in fmnist_test100.npz")
    parser.add_argument("--eps", type=float, default=EPS)
    args = parser.parse_args(argv)
    imports = warm_up()
    t0 = time.perf_counter()
    net, x, label = load(args.index)
    print(f"model {MODEL.name}: loaded in {time.perf_counter() - t0:.2f} s; image {args.index} (label {label}, "
          f"predicted {int(net.predict(x)[0])}), eps {args.eps:.5g}; imports "
          + ", ".join(f"{k} {v:.2f} s" for k, v in imports.items()))
    rows, overruns = {}, []
    for combo in args.combos:
        rows[combo] = {}
        for limit in args.limits:
            wall, status, own = measure(net, x, combo, limit, args.eps)
            rows[combo][limit] = (wall, status, own)
            if wall > limit + SLACK:
                overruns.append(f"{combo} at {limit:g} s: {wall:.2f} s wall ({wall - limit:+.2f} s), "
                                f"result.time {own:.2f} s, status {status}")
            print(f"  {combo:<16} limit {limit:>5g} s: {wall:7.2f} s  {status}", file=sys.stderr, flush=True)
    print(table(rows, args.limits))
    print(f"overruns (> limit + {SLACK:g} s): {len(overruns)}")
    for line in overruns:
        print("  " + line)
    return 1 if overruns else 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
