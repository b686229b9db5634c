"""The paper's objective-over-time figure from a flip-rate run: best margin vs seconds — issue 12.

    python benchmarks/objective_time.py                          # from benchmarks/results/flip_rate.csv
    python benchmarks/objective_time.py --csv benchmarks/results/flip_rate_60s.csv --arch 5x100

Reads the committed rows of a flip-rate run (``benchmarks/flip_rate.py``), keeps the chosen
architectures and methods (default: 2x100 and 5x100; IProp, PGD, IProp+PGD and the MILP, as in
Khalil et al.'s figure), and draws the median best objective ``logit[t] - logit[label]`` over time
with its inter-quartile band, a panel per dataset, ε and architecture (a flip needs >= 0; a run
that flipped keeps its final value).  Writes ``<stem>_objective_time.png`` and ``.svg`` next to
the CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnnmip.bench.plots import _variant_colors, objective_time_figure
from bnnmip.bench.store import read_csv

ROOT = Path(__file__).resolve().parent
METHODS = ("iprop", "pgd", "iprop+pgd", "milp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(ROOT / "results" / "flip_rate.csv"))
    parser.add_argument("--arch", nargs="+", default=["2x100", "5x100"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args(argv)
    source = Path(args.csv)
    with open(source, newline="") as f:
        rows = [r for r in read_csv(f) if r.correct and r.arch in args.arch and r.method in args.methods]
    if not rows:
        print(f"{source}: no rows of {args.arch} x {args.methods}")
        return 1
    fig = objective_time_figure(rows, _variant_colors(rows))
    fig.suptitle(f"Best objective over time, {' and '.join(args.arch)} ({len(rows)} runs; median over images, "
                 "inter-quartile band; a flip needs >= 0)", fontsize=10)
    for ext in ("png", "svg"):
        path = source.with_name(f"{source.stem}_objective_time.{ext}")
        fig.savefig(path, dpi=130 if ext == "png" else None, bbox_inches="tight")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
