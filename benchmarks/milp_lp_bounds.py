"""LP-tightened bounds (MIPVerify style) against interval bounds, on shipped models.

For each model, image and ε (8-bit grid), both bound modes are measured:

* ``bounds s``: time to compute the bounds (interval: numpy; LP: one HiGHS LP per layer, two
  objective changes per free unit);
* ``free``: binaries left (free units; the rest are fixed and removed), per layer, and ``units``
  their total;
* ``build s``: the attack MILP for the closest target, with those bounds;
* the untargeted MILP attack with ``bounds=`` that mode and a time limit (the LP time counts
  against it): verdict and wall time.

    python benchmarks/milp_lp_bounds.py                 # 2x100, 3x100; 4 images; 1/255, 2/255; 20 s
    python benchmarks/milp_lp_bounds.py --quick         # 2x100, 1 image, 1/255, 2 s (smoke test)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from bnnmip import attack, attack_milp, load_onnx
from bnnmip.box import input_box
from bnnmip.io.datasets import load_npz
from bnnmip.milp.formulation import attack_bounds

MODELS = Path(__file__).resolve().parent.parent / "models"


def measure(net, x, eps: float, mode: str, time_limit: float) -> dict:
    box = input_box(net, x, eps)
    t0 = time.perf_counter()
    bounds = attack_bounds(net, box, mode)
    t_bounds = time.perf_counter() - t0
    label = int(net.predict(x)[0])
    logits = net.logits(x)[0]
    target = int(np.argsort(logits[label] - logits)[1])
    t0 = time.perf_counter()
    model = attack_milp(net, x, eps, target, label=label, layer_bounds=bounds)
    t_build = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = attack(net, x, eps, method="milp", bounds=mode, time_limit=time_limit)
    return {"mode": mode, "bounds_s": t_bounds, "free": [b.n_free for b in bounds],
            "binary": sum(b.n_free for b in bounds),
            "rows": model.num_rows, "build_s": t_build, "status": result.status, "attack_s": result.time,
            "verified": result.verified}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist_2x100,fmnist_3x100")
    parser.add_argument("--images", type=int, default=4, help="first N correctly classified test images")
    parser.add_argument("--eps", default="1/255,2/255")
    parser.add_argument("--time-limit", type=float, default=20.0, help="per attack (default 20 s)")
    parser.add_argument("--quick", action="store_true", help="2x100, 1 image, 1/255, 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.images, args.eps, args.time_limit = "fmnist_2x100", 1, "1/255", 2.0
    data = load_npz(MODELS / "fmnist_test100.npz")
    X = data.inputs()
    head = (f"{'model':<13} {'img':>3} {'eps':>5} {'mode':<8} {'bounds s':>8} {'free per layer':<16} "
            f"{'units':>6} {'build s':>7} | {'verdict':<11} {'attack s':>8}")
    print(head)
    print("-" * len(head))
    totals = {}
    for name in args.models.split(","):
        net = load_onnx(MODELS / f"{name}.onnx", levels=255)
        images = np.flatnonzero(net.predict(X) == data.labels)[: args.images]
        for i in images:
            for eps_text in args.eps.split(","):
                num, _, den = eps_text.partition("/")
                eps = float(num) / float(den) if den else float(num)
                for mode in ("interval", "lp"):
                    r = measure(net, X[i], eps, mode, args.time_limit)
                    if r["status"] == "adversarial" and not r["verified"]:
                        raise AssertionError("unverified adversarial example")
                    t = totals.setdefault(mode, {"binary": 0, "bounds_s": 0.0, "attack_s": 0.0, "decided": 0, "n": 0})
                    t["binary"] += r["binary"]
                    t["bounds_s"] += r["bounds_s"]
                    t["attack_s"] += r["attack_s"]
                    t["decided"] += r["status"] != "unknown"
                    t["n"] += 1
                    print(f"{name:<13} {int(i):>3} {eps_text:>5} {mode:<8} {r['bounds_s']:>8.3f} "
                          f"{str(r['free']):<16} {r['binary']:>6} {r['build_s']:>7.3f} | {r['status']:<11} "
                          f"{r['attack_s']:>8.2f}", flush=True)
    print()
    for mode, t in totals.items():
        print(f"{mode:<8} {t['n']} instances: {t['binary']} free-unit binaries in all, bounds {t['bounds_s']:.1f} s, "
              f"attacks {t['attack_s']:.1f} s, decided {t['decided']}/{t['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
