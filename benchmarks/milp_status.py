"""What the exact MILP attack decides on the shipped 2x100 Fashion-MNIST model, per backend.

The first ``--images`` correctly classified test images of ``models/fmnist_test100.npz`` are
attacked untargeted (``bnnmip.attack(..., method="milp")``) at each ``--eps`` on the 8-bit grid
(or continuously, ``--continuous``),
with each backend (HiGHS, SCIP, CVXPY with its default solver HIGHS) and a per-image time limit.
It prints, per ε and backend, how many images came out adversarial (all must be verified by
onnxruntime), robust (every target's MILP solved to optimality with a negative bound) or unknown,
and the median and maximum wall time per image.

    python benchmarks/milp_status.py                          # 20 images, eps 1/255 and 3/255, 30 s
    python benchmarks/milp_status.py --quick                  # 1 image, 3/255, 2 s (the smoke test)
    python benchmarks/milp_status.py --continuous --eps 0.001,0.002   # below one grid step
    python benchmarks/milp_status.py --csv status.csv         # also every run, one line each
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np

from bnnmip import attack, load_onnx
from bnnmip.io.datasets import load_npz

MODELS = Path(__file__).resolve().parent.parent / "models"


def parse_eps(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def correct_images(net, data, n: int) -> list[int]:
    predictions = net.predict(data.inputs())
    return [int(i) for i in np.flatnonzero(predictions == data.labels)[:n]]


def run(model: str, images: int, eps_list: list[str], backends: list[str], time_limit: float,
        levels: int | None = 255) -> list[dict]:
    net = load_onnx(MODELS / f"{model}.onnx", levels=levels)
    data = load_npz(MODELS / "fmnist_test100.npz")
    X = data.inputs()
    for backend in backends:  # solver imports and first-call caches are not charged to the first image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attack(net, X[0], 0.0, method="milp", backend=backend, time_limit=10)
    rows = []
    for eps_text in eps_list:
        eps = parse_eps(eps_text)
        for backend in backends:
            for i in correct_images(net, data, images):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = attack(net, X[i], eps, method="milp", backend=backend, time_limit=time_limit)
                wall = time.perf_counter() - t0
                if result.status == "adversarial" and not result.verified:
                    raise AssertionError(f"image {i}, eps {eps_text}, {backend}: unverified adversarial example")
                rows.append({"eps": eps_text, "backend": backend, "image": i, "status": result.status,
                             "time": wall, "objective": result.objective, "bound": result.bound,
                             "message": result.message})
                print(f"  eps {eps_text:<6} {backend:<6} image {i:>3}: {result.status:<11} {wall:6.2f} s",
                      flush=True)
    return rows


def format_table(rows: list[dict], time_limit: float) -> str:
    head = f"{'eps':<7} {'backend':<7} {'images':>6} {'adversarial':>11} {'robust':>6} {'unknown':>7} " \
           f"{'median s':>8} {'max s':>6}"
    lines = [head, "-" * len(head)]
    for eps in dict.fromkeys(r["eps"] for r in rows):
        for backend in dict.fromkeys(r["backend"] for r in rows):
            sel = [r for r in rows if r["eps"] == eps and r["backend"] == backend]
            if not sel:
                continue
            count = {s: sum(r["status"] == s for r in sel) for s in ("adversarial", "robust", "unknown")}
            times = [r["time"] for r in sel]
            lines.append(f"{eps:<7} {backend:<7} {len(sel):>6} {count['adversarial']:>11} {count['robust']:>6} "
                         f"{count['unknown']:>7} {np.median(times):>8.2f} {max(times):>6.2f}")
    lines.append(f"(untargeted MILP, per-image limit {time_limit:g} s; every adversarial example verified in "
                 "onnxruntime)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_2x100", help="model in models/ (default fmnist_2x100)")
    parser.add_argument("--images", type=int, default=20, help="first N correctly classified images (default 20)")
    parser.add_argument("--eps", default="1/255,3/255", help="comma-separated radii (default 1/255,3/255)")
    parser.add_argument("--backends", default="highs,scip,cvxpy", help="comma-separated (default all three)")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per image (default 30)")
    parser.add_argument("--continuous", action="store_true", help="perturb continuously (default: the 8-bit grid)")
    parser.add_argument("--csv", help="also write every run to this CSV file")
    parser.add_argument("--quick", action="store_true", help="1 image, eps 3/255, 2 s: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.eps, args.time_limit = 1, "3/255", 2.0
    eps_list, backends = args.eps.split(","), args.backends.split(",")
    levels = None if args.continuous else 255
    where = "continuous" if levels is None else "on the 8-bit grid"
    print(f"{args.model}: first {args.images} correctly classified images, eps {eps_list} ({where}), "
          f"backends {backends}, limit {args.time_limit:g} s")
    rows = run(args.model, args.images, eps_list, backends, args.time_limit, levels)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(format_table(rows, args.time_limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
