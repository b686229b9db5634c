"""How fast the attack MILP is built and handed to solvers, natively and through CVXPY.

For each of the eight Fashion-MNIST architectures (one test image, one target, eps = 2/255 on the
8-bit grid) it prints the model's size and, in one run:

* ``build``: :func:`bnnmip.attack_milp` (bounds, fixed units eliminated, CSR rows);
* ``highs``: ``model.to_highs()`` (one ``passModel`` call);
* ``scip``: ``model.to_scip()`` (variables, then one linear constraint per row);
* ``cvxpy``: ``model.to_cvxpy()`` plus CVXPY's compile, ``problem.get_problem_data(solver)``,
  for solver HIGHS (the default) and SCIP;

and the ratios CVXPY route (to_cvxpy + compile) ÷ native route (build + hand-off).  It also
times the whole CVXPY route into a SCIP model: CVXPY's SCIP interface builds its SCIP model entry
by entry inside ``solve_via_data``, which the compile does not include.  Each timing is the best
of ``--repeat`` runs (after a warm-up).

    python benchmarks/milp_build.py            # all eight architectures
    python benchmarks/milp_build.py --quick    # 2x100 only (the smoke test in tests/)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import cvxpy as cp
import numpy as np

from bnnmip import attack_milp, load_onnx
from bnnmip.io.datasets import load_npz

MODELS = Path(__file__).resolve().parent.parent / "models"
ARCHS = ("2x100", "2x200", "2x300", "2x400", "2x500", "3x100", "4x100", "5x100")


def best_time(fn, repeat: int) -> tuple[float, object]:
    """(fastest wall time over ``repeat`` runs, last result)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(arch: str, image: int, eps: float, repeat: int) -> dict:
    net = load_onnx(MODELS / f"fmnist_{arch}.onnx", levels=255)
    x = load_npz(MODELS / "fmnist_test100.npz").inputs()[image]
    label = int(net.predict(x)[0])
    logits = net.logits(x)[0]
    target = int(np.argsort(logits[label] - logits)[1])  # the closest other class

    def build():
        return attack_milp(net, x, eps, target, label=label)

    def cvxpy_route(solver):
        problem, _ = model.to_cvxpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return problem.get_problem_data(solver)

    def cvxpy_scip_handoff():
        """CVXPY's SCIP interface builds its own SCIP model inside solve_via_data: time it with a zero limit."""
        data, chain, _ = cvxpy_route(cp.SCIP)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chain.solve_via_data(model.to_cvxpy()[0], data, False, False, {"scip_params": {"limits/time": 0.0}})

    model = attack_milp(net, x, eps, target, label=label)
    cvxpy_route(cp.HIGHS)  # warm-up: imports and first-call caches
    t_build, model = best_time(build, repeat)
    bounds = model.info["encoding"].bounds
    t_cvx_scip = best_time(lambda: cvxpy_route(cp.SCIP), repeat)[0]
    return {
        "arch": arch, "rows": model.num_rows, "cols": model.num_cols, "binary": model.num_binary,
        "integer": model.num_integer - model.num_binary, "nnz": model.nnz,
        "fixed": sum(len(b.fixed) - b.n_free for b in bounds), "units": sum(len(b.fixed) for b in bounds),
        "build": t_build,
        "highs": best_time(model.to_highs, repeat)[0],
        "scip": best_time(model.to_scip, repeat)[0],
        "cvxpy_highs": best_time(lambda: cvxpy_route(cp.HIGHS), repeat)[0],
        "cvxpy_scip": t_cvx_scip,
        "cvxpy_scip_handoff": best_time(cvxpy_scip_handoff, 1)[0],
    }


def format_rows(rows: list[dict]) -> str:
    head = (f"{'arch':<6} {'rows':>6} {'cols':>6} {'binary':>6} {'int':>4} {'nonzeros':>10} {'fixed':>9} | "
            f"{'build':>7} {'highs':>7} {'scip':>7} | {'cvx+H':>7} {'cvx+S':>7} {'cvx→S':>7} | "
            f"{'ratio H':>7} {'ratio S':>7}")
    lines = [head, "-" * len(head)]
    ms = lambda t: f"{t * 1e3:>5.0f}ms" if t >= 0.1 else f"{t * 1e3:>5.1f}ms"  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['arch']:<6} {r['rows']:>6} {r['cols']:>6} {r['binary']:>6} {r['integer']:>4} {r['nnz']:>10,} "
            f"{r['fixed']:>4}/{r['units']:<4} | {ms(r['build'])} {ms(r['highs'])} {ms(r['scip'])} | "
            f"{ms(r['cvxpy_highs'])} {ms(r['cvxpy_scip'])} {ms(r['cvxpy_scip_handoff'])} | "
            f"{r['cvxpy_highs'] / (r['build'] + r['highs']):>6.1f}x "
            f"{r['cvxpy_scip_handoff'] / (r['build'] + r['scip']):>6.1f}x"
        )
    lines += [
        "",
        "build = attack_milp; highs / scip = to_highs() / to_scip(); cvx+H / cvx+S = to_cvxpy() + "
        "problem.get_problem_data(HIGHS / SCIP);",
        "cvx→S = the whole CVXPY route into a SCIP model (compile + CVXPY's own SCIP model build, solved with a zero "
        "time limit).",
        "ratio H = cvx+H / (build + highs): CVXPY route ÷ native build + hand-off.",
        "ratio S = cvx→S / (build + scip): both routes end with a SCIP model (pyscipopt has no array interface, so",
        "the native hand-off is slower than CVXPY's compile alone, cvx+S, but not than CVXPY's own SCIP build).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2x100 only, one repetition")
    parser.add_argument("--image", type=int, default=0, help="test image (default 0)")
    parser.add_argument("--eps", type=float, default=2 / 255, help="L-infinity radius (default 2/255)")
    parser.add_argument("--repeat", type=int, default=7, help="timings are the best of this many runs")
    args = parser.parse_args(argv)
    archs = ARCHS[:1] if args.quick else ARCHS
    repeat = 1 if args.quick else args.repeat
    print(f"fmnist models, image {args.image}, eps {args.eps:.6g}, closest target; best of {repeat}")
    rows = []
    for arch in archs:
        rows.append(measure(arch, args.image, args.eps, repeat))
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
