#!/usr/bin/env python3
"""Soundness at scale (issue 7): no false adversarial example, no false certificate.

Random tiny BNNs (2-4 inputs, 1-3 hidden layers of 2-6 units, 2-4 classes, every kind of first
layer, written in random ONNX patterns) are attacked by every method and backend:

    milp/highs, milp/scip, pgd, iprop/highs, iprop+pgd/highs, best/highs

**Grid variant.** Inputs live on a coarse grid (4-8 levels), so the whole perturbation box (at
most 7^4 points) is enumerated and run through bnnmip's exact forward pass *and* onnxruntime.
A violation is

* an 'adversarial' result whose ``x_adv`` is outside the box or off the grid, or whose class in
  onnxruntime is still the clean label ("fake adversarial");
* a 'robust' result while some box point changes the prediction (untargeted) or reaches the
  target class (targeted), by either judge ("false certificate");
* 'robust' from a method that cannot prove it (PGD, IProp), or a wrong clean label.

**Continuous variant.** No grid: every 'robust' verdict is checked against dense random sampling
of the box (plus all its vertices) in onnxruntime and bnnmip, and every adversarial example
against onnxruntime.

    python benchmarks/soundness.py                         # 1,000 grid + 300 continuous networks
    python benchmarks/soundness.py --grid 100 --continuous 30 --workers 1

The figures printed: networks, attack cases, verdicts per method, violations (must be 0).
``tests/system/test_soundness.py`` runs a small sample of the same checks.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from bnnmip import BNN, load_onnx, onnx_logits
from bnnmip.attacks import attack
from bnnmip.box import input_box
from bnnmip.io.onnx_writer import Pattern, random_params, to_onnx
from bnnmip.io.runtime import tie_inputs

RUNS = (("milp", "highs"), ("milp", "scip"), ("pgd", None), ("iprop", "highs"), ("iprop+pgd", "highs"),
        ("best", "highs"))
# Small budgets: the networks are tiny, and IProp / PGD never prove robustness, so they would
# otherwise spend their whole time limit on every robust case.
OPTIONS = {
    "pgd": {"restarts": 48, "steps": 40},
    "iprop": {"max_iterations": 40, "sub_time_limit": 0.2},
    "iprop+pgd": {"max_iterations": 40, "sub_time_limit": 0.2},
}
CAN_PROVE = {"milp", "best"}
SAMPLES = 20_000  # random points per box in the continuous variant


@dataclass
class Instance:
    """One attack case: a network, a clean input, a radius and an optional target."""

    net: BNN
    x: np.ndarray
    eps: float
    target: int | None
    label: int
    grid: bool
    seed: int
    kind: str


@dataclass
class Tally:
    """What a sweep saw: cases, verdicts, violations (with details)."""

    networks: int = 0
    cases: int = 0
    attacks: int = 0
    points: int = 0  # box points (grid) or samples (continuous) judged
    verdicts: Counter = field(default_factory=Counter)  # (method/backend, status) -> count
    kinds: Counter = field(default_factory=Counter)
    judge_disagreements: int = 0  # box points where bnnmip's forward and onnxruntime differ (ties excluded)
    exact_flips: int = 0  # cases where brute force (or sampling) found a flip
    violations: list = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, other: Tally) -> None:
        for name in ("networks", "cases", "attacks", "points", "judge_disagreements", "exact_flips", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.verdicts.update(other.verdicts)
        self.kinds.update(other.kinds)
        self.violations += other.violations


# ---------------------------------------------------------------------- random instances
def make_network(seed: int, folder: Path, grid: bool) -> tuple[BNN, str]:
    """A random tiny BNN written in a random ONNX pattern and loaded back."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5))
    widths = [int(w) for w in rng.integers(2, 7, size=int(rng.integers(1, 4)))]
    kind = str(rng.choice(["real", "real", "binarized", "real_weights"]))
    params = random_params(rng, n, widths, int(rng.integers(2, 5)), input_binarization=kind == "binarized",
                           real_first_layer=kind == "real_weights", zero_gamma=0.1, negative_gamma=0.4)
    pattern = Pattern(linear=str(rng.choice(["matmul", "gemm"])), bn=str(rng.choice(["bn", "mul_add", "sub_div"])),
                      act=str(rng.choice(["where_ge", "where_less", "sign"])),
                      weights=str(rng.choice(["int8", "float", "sign_latent"])))
    if pattern.act == "sign":  # ONNX Sign(0) = 0: keep constant units (γ = 0) off the tie
        for _, beta, _, _ in params.batch_norms + ([params.input_bn] if params.input_bn else []):
            beta[beta == 0] = 0.5
    path = folder / f"net{seed}.onnx"
    onnx.save(to_onnx(params, pattern), str(path))
    levels = int(rng.choice([4, 5, 8])) if grid else None
    return load_onnx(path, levels=levels), kind


def make_instances(seed: int, folder: Path, grid: bool) -> list[Instance]:
    """Two cases on one network: untargeted, and targeted at a random other class."""
    net, kind = make_network(seed, folder, grid)
    rng = np.random.default_rng(seed + 1)
    if grid:
        x = rng.integers(0, net.levels + 1, net.n_inputs) / net.levels
        eps = int(rng.integers(1, 4)) / net.levels
    else:
        x = rng.random(net.n_inputs)
        eps = float(rng.choice([0.02, 0.05, 0.1, 0.2, 0.3]))
    label = int(np.argmax(onnx_logits(net, x)[0]))
    others = [c for c in range(net.n_classes) if c != label]
    target = int(rng.choice(others))
    return [Instance(net, x, eps, t, label, grid, seed, kind) for t in (None, target)]


# ---------------------------------------------------------------------- the truth
def box_points(inst: Instance) -> np.ndarray:
    """Every grid point of the box (grid), or dense samples plus every vertex (continuous)."""
    box = input_box(inst.net, inst.x, inst.eps)
    if inst.grid:
        lo = inst.net.input_range[0]
        axes = [lo + np.arange(a, b + 1) * box.step for a, b in zip(box.k_lower, box.k_upper, strict=True)]
        return np.array(list(itertools.product(*axes)), np.float64)
    rng = np.random.default_rng(inst.seed + 2)
    samples = rng.uniform(box.lower, box.upper, size=(SAMPLES, inst.net.n_inputs))
    vertices = np.array(list(itertools.product(*zip(box.lower, box.upper, strict=True))), np.float64)
    return np.concatenate([vertices, samples, inst.x[None, :]])


@dataclass
class Truth:
    """Classes of every judged point, by bnnmip's exact forward pass and by onnxruntime."""

    ours: np.ndarray
    onnx: np.ndarray

    def flips(self, inst: Instance) -> tuple[bool, bool]:
        """(bnnmip finds one, onnxruntime finds one): a change of class, or the target reached."""
        hit = (lambda c: c == inst.target) if inst.target is not None else (lambda c: c != inst.label)
        return bool(hit(self.ours).any()), bool(hit(self.onnx).any())


def truth(inst: Instance) -> tuple[np.ndarray, Truth]:
    points = box_points(inst)
    ours = inst.net.predict(points)
    theirs = np.argmax(onnx_logits(inst.net, points), axis=1)
    return points, Truth(ours, theirs)


# ---------------------------------------------------------------------- checking one verdict
def check_result(inst: Instance, run: str, method: str, result, truth_: Truth) -> list[str]:
    """The violations of one attack result (empty when sound)."""
    where = (f"seed={inst.seed} {'grid' if inst.grid else 'continuous'} {inst.kind} {run} "
             f"target={inst.target} eps={inst.eps:g}")
    out = []
    if result.label != inst.label:
        out.append(f"{where}: clean label {result.label}, onnxruntime says {inst.label}")
    if result.status == "adversarial":
        out += _check_adversarial(inst, where, result)
    elif result.status == "robust":
        if method not in CAN_PROVE:
            out.append(f"{where}: {method} claimed 'robust', which it cannot prove")
        ours, theirs = truth_.flips(inst)
        if ours or theirs:
            judge = "bnnmip and onnxruntime" if ours and theirs else ("bnnmip" if ours else "onnxruntime")
            out.append(f"{where}: false certificate: 'robust' but {judge} find a point that "
                       + ("reaches the target" if inst.target is not None else "changes the class"))
    elif result.status != "unknown":
        out.append(f"{where}: unknown status {result.status!r}")
    return out


def _check_adversarial(inst: Instance, where: str, result) -> list[str]:
    x_adv = result.x_adv
    if x_adv is None:
        return [f"{where}: 'adversarial' without x_adv"]
    x_adv = np.asarray(x_adv, np.float64).reshape(-1)
    box = input_box(inst.net, inst.x, inst.eps)
    out = []
    if np.any(x_adv < box.lower - 1e-9) or np.any(x_adv > box.upper + 1e-9):
        out.append(f"{where}: x_adv outside the box (max |dx| = {np.abs(x_adv - inst.x).max():g})")
    if inst.grid:
        k = (x_adv - inst.net.input_range[0]) / box.step
        if np.any(np.abs(k - np.rint(k)) > 1e-6):
            out.append(f"{where}: x_adv off the input grid")
    onnx_class = int(np.argmax(onnx_logits(inst.net, x_adv)[0]))
    if onnx_class == inst.label:
        out.append(f"{where}: fake adversarial: onnxruntime still says {inst.label}")
    if not result.verified:
        out.append(f"{where}: 'adversarial' but not verified by onnxruntime")
    return out


def _disagreements(net: BNN, points: np.ndarray, truth_: Truth) -> int:
    """Points where bnnmip and onnxruntime differ, except ONNX Sign(0) = 0 ties (bnnmip reads +1)."""
    differ = np.flatnonzero(truth_.ours != truth_.onnx)
    if len(differ) == 0:
        return 0
    return len(differ) - len(tie_inputs(net, points[differ]))


# ---------------------------------------------------------------------- one network
def check_network(seed: int, grid: bool, time_limit: float, runs=RUNS) -> Tally:
    tally = Tally(networks=1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        instances = make_instances(seed, Path(folder), grid)
        tally.kinds[instances[0].kind] += 1
        for inst in instances:
            points, truth_ = truth(inst)
            tally.cases += 1
            tally.points += len(points)
            tally.exact_flips += any(truth_.flips(inst))
            tally.judge_disagreements += _disagreements(inst.net, points, truth_)
            for method, backend in runs:
                run = f"{method}/{backend}" if backend else method
                tally.attacks += 1
                try:
                    result = attack(inst.net, inst.x, inst.eps, method=method, target=inst.target,
                                    time_limit=time_limit, **({"backend": backend} if backend else {}),
                                    **OPTIONS.get(method, {}))
                except Exception as e:  # noqa: BLE001 - a crash is a finding: recorded, the other runs go on
                    tally.verdicts[(run, "crash")] += 1
                    tally.violations.append(f"seed={inst.seed} {inst.kind} {run} target={inst.target}: crash: "
                                            f"{type(e).__name__}: {e}")
                    continue
                tally.verdicts[(run, result.status)] += 1
                tally.violations += check_result(inst, run, method, result, truth_)
    tally.seconds = time.perf_counter() - t0
    return tally


def _job(args) -> tuple[bool, Tally]:
    seed, grid, time_limit = args
    try:
        return grid, check_network(seed, grid, time_limit)
    except Exception as e:  # noqa: BLE001 - a crash is a finding, recorded like a violation
        tally = Tally(networks=1)
        tally.violations.append(f"seed={seed} {'grid' if grid else 'continuous'}: {type(e).__name__}: {e}")
        return grid, tally


def sweep(n_grid: int, n_continuous: int, *, seed: int = 0, time_limit: float = 5.0, workers: int = 1,
          progress: bool = False) -> tuple[Tally, Tally]:
    """Run both variants; returns (grid tally, continuous tally)."""
    jobs = [(seed + i, True, time_limit) for i in range(n_grid)]
    jobs += [(seed + 10**6 + i, False, time_limit) for i in range(n_continuous)]
    grid, continuous = Tally(), Tally()
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    results = pool.imap_unordered(_job, jobs, chunksize=4) if pool else map(_job, jobs)
    try:
        for i, (is_grid, tally) in enumerate(results, 1):
            (grid if is_grid else continuous).merge(tally)
            for violation in tally.violations if progress else ():
                print(f"  VIOLATION {violation}", file=sys.stderr, flush=True)
            if progress and i % 50 == 0:
                print(f"  {i}/{len(jobs)} networks, {len(grid.violations) + len(continuous.violations)} violations",
                      file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    return grid, continuous


def report(name: str, tally: Tally) -> str:
    lines = [f"{name}: {tally.networks} networks ({', '.join(f'{k} {v}' for k, v in sorted(tally.kinds.items()))}), "
             f"{tally.cases} cases, {tally.attacks} attack runs, {tally.points:,} points judged, "
             f"{tally.exact_flips} cases with a flip in the box, {tally.seconds:.0f} s of work"]
    runs = sorted({run for run, _ in tally.verdicts})
    for run in runs:
        counts = {s: tally.verdicts[(run, s)] for s in ("adversarial", "robust", "unknown", "crash")}
        lines.append(f"  {run:<16} adversarial {counts['adversarial']:>5}  robust {counts['robust']:>5}  "
                     f"unknown {counts['unknown']:>5}  crash {counts['crash']:>3}")
    fake = sum("fake adversarial" in v or "x_adv" in v or "not verified" in v for v in tally.violations)
    false_cert = sum("false certificate" in v for v in tally.violations)
    crashes = sum(": crash: " in v for v in tally.violations)
    other = len(tally.violations) - fake - false_cert - crashes
    lines.append(f"  violations: {len(tally.violations)} (fake adversarial examples {fake}, false certificates "
                 f"{false_cert}, crashes {crashes}, other {other}); bnnmip/onnxruntime disagreements off ties: "
                 f"{tally.judge_disagreements}")
    lines += [f"    {v}" for v in tally.violations[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=1000, help="networks with grid inputs (brute force)")
    parser.add_argument("--continuous", type=int, default=300, help="networks with continuous inputs (sampling)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per attack")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    grid, continuous = sweep(args.grid, args.continuous, seed=args.seed, time_limit=args.time_limit,
                             workers=args.workers, progress=True)
    print(report("grid (brute force)", grid))
    print(report("continuous (sampling)", continuous))
    total = len(grid.violations) + len(continuous.violations)
    print(f"total: {grid.networks + continuous.networks} networks, {grid.cases + continuous.cases} cases, "
          f"{grid.attacks + continuous.attacks} attack runs, {total} violations, "
          f"{time.perf_counter() - t0:.0f} s wall")
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
