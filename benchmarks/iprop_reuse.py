"""IProp iterations per second: layer problems updated in place ÷ rebuilt every iteration — issue 5.

(The backend-solved layer problems, ``solver='milp'``; IProp's default native solver builds no models.)

    python benchmarks/iprop_reuse.py [--quick]

Both modes run the same IProp (same seed, same images, same time limit) in one process, one
after the other per image; ``reuse=False`` rebuilds each layer-local problem from the network
(rows, model, solver) at every solve, as an implementation without in-place updates would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import bnnmip
from bnnmip.attacks import iprop_attack

ROOT = Path(__file__).resolve().parents[1]


def measure(arch: str, images: int, eps_levels: int, seconds: float) -> tuple[float, float]:
    """(iterations per second with reuse, without reuse) on the first correctly classified images."""
    net = bnnmip.load_onnx(ROOT / "models" / f"fmnist_{arch}.onnx", levels=255)
    data = bnnmip.datasets.load_npz(ROOT / "models" / "fmnist_test100.npz")
    X = data.inputs()
    chosen = np.flatnonzero(net.predict(X) == data.labels)[:images]
    rate = {True: [0, 0.0], False: [0, 0.0]}
    for i in chosen:
        for reuse in (True, False):
            r = iprop_attack(net, X[i], eps_levels / 255, time_limit=seconds, solver="milp", reuse=reuse, seed=0)
            rate[reuse][0] += r.details["iterations"]
            rate[reuse][1] += r.time
    return rate[True][0] / rate[True][1], rate[False][0] / rate[False][1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small architecture, one image, 2 s")
    parser.add_argument("--eps-levels", type=int, default=2)
    args = parser.parse_args(argv)
    archs = ["2x100"] if args.quick else ["2x100", "2x300", "2x500", "3x100", "5x100"]
    images, seconds = (1, 2.0) if args.quick else (3, 10.0)
    print(f"{'arch':<7}{'in place it/s':>15}{'rebuilt it/s':>14}{'ratio':>8}")
    ratios = []
    for arch in archs:
        reuse, rebuild = measure(arch, images, args.eps_levels, seconds)
        ratios.append(reuse / rebuild)
        print(f"{arch:<7}{reuse:>15.2f}{rebuild:>14.2f}{ratios[-1]:>8.2f}")
    print(f"geometric mean ratio {np.exp(np.mean(np.log(ratios))):.2f} (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
