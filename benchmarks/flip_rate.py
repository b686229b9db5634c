"""Flip rate of PGD, IProp, IProp+PGD, the MILP and 'best' per (dataset, architecture, ε), beside the images
the exact engine certifies robust (method 'exact': the 'certified' column) — issues 5, 11 and 12.

    python benchmarks/flip_rate.py                      # the committed config (10 s), 2 workers
    python benchmarks/flip_rate.py --config benchmarks/configs/flip_rate_60s.toml --workers 1
    python benchmarks/flip_rate.py --report             # the tables of what is finished, no run

Runs the configuration through ``bnnmip.bench`` (resumable: rerunning continues where a killed
run stopped), prints the summary table, a side-by-side table (one row per dataset, architecture
and ε, one column per method) and issue 12's acceptance checks, and writes them to
``benchmarks/results/<config name>.md`` and the rows to ``<config name>.csv``.

To add a column to the side-by-side table, append a :class:`Column` to :data:`COLUMNS`; to add a
check, append a function of the summary lines to :data:`CHECKS`.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bnnmip.bench.config import load_config
from bnnmip.bench.jobs import expand
from bnnmip.bench.report import SummaryLine, arch_key, conflicts, format_table, summarize
from bnnmip.bench.rows import write_csv
from bnnmip.bench.runner import run
from bnnmip.bench.store import ResultStore

ROOT = Path(__file__).resolve().parent
METHODS = ("pgd", "iprop", "iprop+pgd", "milp", "best")
SINGLE = ("pgd", "iprop", "milp")  # the methods 'best' chains
EXACT = "exact"  # bnnmip.verify: its robust proofs are the 'certified' column (issue 11)
IPROP_OVER_PGD = 1.3  # issue 12: IProp's flips in all >= this many times PGD's


def method(line: SummaryLine) -> str:
    """'iprop+pgd/highs' -> 'iprop+pgd' (variants are method/backend)."""
    return line.variant.split("/")[0]


def by_row(lines: list[SummaryLine]) -> dict[tuple, dict[str, SummaryLine]]:
    """{(dataset, arch, eps_levels): {method: line}}, rows in table order."""
    rows: dict[tuple, dict[str, SummaryLine]] = defaultdict(dict)
    for s in sorted(lines, key=lambda s: (s.dataset, arch_key(s.arch), s.eps_levels)):
        rows[s.dataset, s.arch, s.eps_levels][method(s)] = s
    return rows


# ---------------------------------------------------------------------- the side-by-side table
@dataclass(frozen=True)
class Column:
    """One column of the side-by-side table: a header and the cell of a row's lines."""

    header: str
    cell: Callable[[dict[str, SummaryLine]], str]


def _flips(name: str) -> Column:
    return Column(name, lambda row: str(row[name].flipped) if name in row else "-")


def _certified(row: dict[str, SummaryLine]) -> str:
    """Images the exact engine proved robust: no attack can flip them, so images - certified is the ceiling."""
    return str(row[EXACT].robust) if EXACT in row else "-"


COLUMNS: list[Column] = [
    Column("images", lambda row: str(max(s.attacked for s in row.values()))),
    *(_flips(m) for m in METHODS),
    Column("certified", _certified),
]


def side_by_side(lines: list[SummaryLine]) -> str:
    """Flips per method, one row per (dataset, arch, ε), with totals per dataset and overall."""
    rows = by_row(lines)
    header = ["dataset", "arch", "eps", *(c.header for c in COLUMNS)]
    body = [[d, a, f"{e:g}/255", *(c.cell(row) for c in COLUMNS)] for (d, a, e), row in rows.items()]
    for dataset in sorted({k[0] for k in rows}) + [None]:
        picked = [s for s in lines if dataset is None or s.dataset == dataset]
        totals = {m: sum(s.flipped for s in picked if method(s) == m) for m in METHODS}
        has_exact = any(EXACT in r for r in rows.values())
        certified = sum(s.robust for s in picked if method(s) == EXACT) if has_exact else "-"
        images = sum(max(s.attacked for s in row.values()) for k, row in rows.items() if dataset in (None, k[0]))
        body.append([dataset or "all", "total", "", str(images), *(str(totals[m]) for m in METHODS), str(certified)])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in [header, *body])


# ---------------------------------------------------------------------- issue 12's checks
def _line(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'MISS'} {text}"


def iprop_vs_pgd_per_architecture(lines: list[SummaryLine]) -> list[str]:
    """IProp alone >= PGD on every architecture of each dataset (both radii together)."""
    flips: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in lines:
        flips[s.dataset, s.arch][method(s)] += s.flipped
    return [_line(f["iprop"] >= f["pgd"], f"iprop >= pgd on {d} {a} (both radii): {f['iprop']} vs {f['pgd']}")
            for (d, a), f in sorted(flips.items(), key=lambda kv: (kv[0][0], arch_key(kv[0][1])))
            if "iprop" in f and "pgd" in f]


def iprop_total(lines: list[SummaryLine]) -> list[str]:
    """IProp alone >= 1.3 x PGD in flips over everything."""
    total = defaultdict(int)
    for s in lines:
        total[method(s)] += s.flipped
    ok = total["iprop"] >= IPROP_OVER_PGD * total["pgd"]
    ratio = total["iprop"] / total["pgd"] if total["pgd"] else float("inf")
    return [_line(ok, f"iprop >= {IPROP_OVER_PGD} x pgd in all: {total['iprop']} vs {total['pgd']} "
                      f"(x{ratio:.2f})")]


def chain_vs_parts(lines: list[SummaryLine]) -> list[str]:
    """iprop+pgd >= max(PGD, MILP) on every row."""
    out = []
    for key, row in by_row(lines).items():
        if "iprop+pgd" in row and "pgd" in row and "milp" in row:
            best_part = max(row["pgd"].flipped, row["milp"].flipped)
            out.append(_line(row["iprop+pgd"].flipped >= best_part,
                             f"iprop+pgd >= max(pgd, milp) on {_name(key)}: {row['iprop+pgd'].flipped} vs "
                             f"{row['pgd'].flipped}, {row['milp'].flipped}"))
    return out


def best_vs_all(lines: list[SummaryLine]) -> list[str]:
    """'best' >= every single method (and iprop+pgd) on every row."""
    out = []
    for key, row in by_row(lines).items():
        if "best" not in row:
            continue
        others = {m: row[m].flipped for m in (*SINGLE, "iprop+pgd") if m in row}
        top = max(others.values(), default=0)
        detail = ", ".join(f"{m} {f}" for m, f in others.items())
        out.append(_line(row["best"].flipped >= top, f"best >= every method on {_name(key)}: "
                                                      f"{row['best'].flipped} vs {detail}"))
    return out


def _name(key: tuple) -> str:
    dataset, arch, eps = key
    return f"{dataset} {arch} {eps:g}/255"


CHECKS: list[Callable[[list[SummaryLine]], list[str]]] = [
    iprop_vs_pgd_per_architecture, iprop_total, chain_vs_parts, best_vs_all,
]


def complete_groups(rows, n_methods: int) -> list:
    """The rows of the (model, image, ε) groups every method has finished: a stopped run's table
    then compares the methods on the same images."""
    count = defaultdict(int)
    for r in rows:
        count[r.model_sha256, r.image_index, r.eps] += 1
    return [r for r in rows if count[r.model_sha256, r.image_index, r.eps] == n_methods]


def contradictions(rows) -> list[str]:
    """An image one method proved robust and another flipped, or a flip onnxruntime did not confirm
    (:func:`~bnnmip.bench.report.conflicts`: a bug, reported loudly)."""
    problems, n = conflicts(rows, variant=lambda r: r.method)
    ok = f"no image both proved robust and flipped, every flip re-checked ({n} image-radius pairs)"
    return [_line(False, p) for p in problems] or [_line(True, ok)]


def report(config, rows, n_jobs: int) -> str:
    """The markdown report: what was run, the side-by-side table, the checks, the full table."""
    lines = summarize(rows)
    checks = contradictions(rows) + [c for check in CHECKS for c in check(lines)]
    misses = sum(c.startswith("MISS") for c in checks)
    images = {spec.images.describe() for spec in config.models}
    options = "; ".join(f"{m}: {o}" for m, o in config.options) or "none"
    return (f"# {config.name}\n\n{len(rows)} of {n_jobs} jobs finished; {config.time_limit:g} s per job; images: "
            f"{', '.join(sorted(images))}; method options: {options}.\n\n"
            f"## Flips side by side\n\n```\n{side_by_side(lines)}\n```\n\n"
            f"## Checks ({len(checks) - misses} pass, {misses} miss)\n\n" + "\n".join(f"- {c}" for c in checks)
            + f"\n\n## Every method\n\n```\n{format_table(lines)}\n```\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flip_rate.toml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--db", help="results database (default: the config's)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: the tables of the jobs finished so far (e.g. of a stopped run)")
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
    text = report(config, rows, len(jobs))
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = config.name
    (out / f"{stem}.md").write_text(text)
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
