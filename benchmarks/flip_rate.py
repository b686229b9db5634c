"""Flip rate of PGD, IProp, IProp+PGD and the MILP per (dataset, architecture, ε) — issue 5.

    python benchmarks/flip_rate.py                      # the committed config, 2 workers
    python benchmarks/flip_rate.py --config benchmarks/configs/smoke.toml --workers 1
    python benchmarks/flip_rate.py --report             # the table of what is finished, no run

Runs the configuration through ``bnnmip.bench`` (resumable: rerunning continues where a killed
run stopped), prints the flip-rate table, checks the issue's targets and writes the table to
``benchmarks/results/flip_rate.md`` and the rows to ``flip_rate.csv``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from bnnmip.bench.config import load_config
from bnnmip.bench.jobs import expand
from bnnmip.bench.report import format_table, summarize
from bnnmip.bench.rows import write_csv
from bnnmip.bench.runner import run
from bnnmip.bench.store import ResultStore

ROOT = Path(__file__).resolve().parent
WIDER_OR_DEEPER = lambda arch: arch != "2x100"  # noqa: E731


def targets(lines) -> list[str]:
    """The issue's targets, each as 'PASS ...' or 'MISS ...'."""
    method = lambda s: s.variant.split("/")[0]  # noqa: E731  ("iprop+pgd/highs": method/backend)
    rate = {(s.dataset, s.arch, s.eps_levels, method(s)): s for s in lines}
    rows = sorted({k[:3] for k in rate})
    out = []
    for key in rows:
        ip, pgd, milp = (rate.get((*key, m)) for m in ("iprop+pgd", "pgd", "milp"))
        if ip and pgd:
            ok = ip.flipped >= pgd.flipped
            out.append(f"{'PASS' if ok else 'MISS'} iprop+pgd >= pgd on {key}: {ip.flipped} vs {pgd.flipped}")
        if ip and milp and WIDER_OR_DEEPER(key[1]):
            ok = ip.flipped >= milp.flipped
            out.append(f"{'PASS' if ok else 'MISS'} iprop+pgd >= milp on {key}: {ip.flipped} vs {milp.flipped}")
    totals = defaultdict(int)
    for s in lines:
        totals[method(s)] += s.flipped
    out.append(f"{'PASS' if totals['iprop'] > totals['pgd'] else 'MISS'} iprop beats pgd on average: "
               f"{totals['iprop']} vs {totals['pgd']} flips in all")
    return out


def complete_groups(rows, n_methods: int) -> list:
    """The rows of the (model, image, ε) groups every method has finished: a stopped run's table
    then compares the methods on the same images."""
    count = defaultdict(int)
    for r in rows:
        count[r.model_sha256, r.image_index, r.eps] += 1
    return [r for r in rows if count[r.model_sha256, r.image_index, r.eps] == n_methods]


def milp_coverage(rows, arch: str = "2x100") -> list[str]:
    """On ``arch``, the share of the flips the MILP found (so proved to exist) that IProp found too."""
    flipped = defaultdict(set)  # (dataset, eps, method) -> image indices with a verified flip
    for r in rows:
        if r.arch == arch and r.status == "adversarial" and r.verified:
            flipped[r.dataset, r.eps_levels, r.method].add(r.image_index)
    out = []
    for dataset, eps in sorted({k[:2] for k in flipped}):
        milp = flipped[dataset, eps, "milp"]
        for method in ("iprop", "iprop+pgd"):
            found = len(milp & flipped[dataset, eps, method])
            ok = found >= 0.9 * len(milp)
            out.append(f"{'PASS' if ok else 'MISS'} {method} finds >= 90% of the MILP's flips on "
                       f"({dataset!r}, {arch!r}, {eps}): {found} of {len(milp)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flip_rate.toml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--db", help="results database (default: the config's)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: the table of the jobs finished so far (e.g. of a stopped run)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    jobs = expand(config)
    if args.report:
        summary = None
        db = args.db or config.db or Path(f"{config.name}.sqlite")
    else:
        summary = run(config, db=args.db, workers=args.workers, progress=not args.no_progress)
        db = summary.db
    with ResultStore(db) as store:
        rows = complete_groups(store.rows({job.key for job in jobs}), len(config.methods))
    lines = summarize(rows)
    table = format_table(lines)
    checks = targets(lines) + milp_coverage(rows)
    print(table)
    print("\n".join(checks))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = config.name
    (out / f"{stem}.md").write_text(f"# {stem}\n\n{len(rows)} of {len(jobs)} jobs finished.\n\n```\n{table}\n```\n\n"
                                    + "\n".join(f"- {c}" for c in checks) + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        write_csv(rows, f)
    done = f"{len(rows)} of {len(jobs)} jobs finished (in groups every method finished)"
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.csv')}; {done}")
    if summary is None:
        return 0 if len(rows) == len(jobs) else 1
    print(f"{summary.ran} run now, {summary.elapsed:.0f} s")
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
