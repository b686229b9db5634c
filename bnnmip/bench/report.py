"""Reading results: running flip rates (the progress bar), and the summary table of ``bnnmip results``.

The **flip rate** of a method is the fraction of correctly classified images (``label == pred``)
whose prediction it changed ('adversarial'), among its jobs that did not fail ('error').
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .rows import ResultRow

STATUS_ORDER = ("adversarial", "robust", "unknown", "error")


@dataclass
class Tally:
    """Running counts over result rows: statuses, and flips / attacked images per method variant."""

    statuses: Counter = field(default_factory=Counter)
    attacked: Counter = field(default_factory=Counter)
    flipped: Counter = field(default_factory=Counter)

    def add(self, row: ResultRow) -> None:
        self.statuses[row.status] += 1
        if row.correct and row.status != "error":
            self.attacked[row.variant] += 1
            self.flipped[row.variant] += row.flipped

    def add_all(self, rows: Iterable[ResultRow]) -> Tally:
        for row in rows:
            self.add(row)
        return self

    def flip_rates(self) -> tuple[tuple[str, int, int], ...]:
        """(variant, flipped, attacked) per method variant, in first-seen order."""
        return tuple((v, self.flipped[v], n) for v, n in self.attacked.items())

    def postfix(self) -> str:
        """A short line for the progress bar: flip rate per variant, and errors if any."""
        parts = [f"{v} {100 * f / n:.0f}%" for v, f, n in self.flip_rates() if n]
        if self.statuses["error"]:
            parts.append(f"errors {self.statuses['error']}")
        return " | ".join(parts)


@dataclass(frozen=True)
class SummaryLine:
    """One line of the summary table: a (dataset, arch, ε, method variant) group."""

    dataset: str
    arch: str
    eps_levels: float
    variant: str
    attacked: int  # correctly classified images with a finished (non-error) job
    flipped: int
    robust: int
    unknown: int
    errors: int
    median_time: float | None

    @property
    def flip_rate(self) -> float | None:
        return self.flipped / self.attacked if self.attacked else None


def arch_key(arch: str) -> tuple:
    """Sort architectures as depth x width numerically ('2x100' < '2x200' < '3x100')."""
    try:
        depth, width = (int(v) for v in arch.lower().split("x"))
        return (0, depth, width, arch)
    except ValueError:
        return (1, 0, 0, arch)


def summarize(rows: Iterable[ResultRow]) -> list[SummaryLine]:
    """Group rows by dataset, architecture, ε and method variant (correctly classified images only)."""
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.correct:
            groups[(r.dataset, r.arch, r.eps_levels, r.variant)].append(r)
    lines = []
    for (dataset, arch, eps_levels, variant), group in groups.items():
        counts = Counter(r.status for r in group)
        times = sorted(r.time for r in group if r.time is not None and r.status != "error")
        lines.append(SummaryLine(
            dataset, arch, eps_levels, variant, len(group) - counts["error"], counts["adversarial"],
            counts["robust"], counts["unknown"], counts["error"], times[len(times) // 2] if times else None,
        ))
    lines.sort(key=lambda s: (s.dataset, arch_key(s.arch), s.eps_levels, s.variant))
    return lines


def format_table(lines: list[SummaryLine]) -> str:
    """The summary as an aligned text table."""
    header = ("dataset", "arch", "eps", "method", "images", "flipped", "robust", "unknown", "errors", "flip rate",
              "median s")
    body = [(s.dataset, s.arch, f"{s.eps_levels:g}/255", s.variant, str(s.attacked), str(s.flipped), str(s.robust),
             str(s.unknown), str(s.errors), "-" if s.flip_rate is None else f"{100 * s.flip_rate:.1f}%",
             "-" if s.median_time is None else f"{s.median_time:.2f}") for s in lines]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    left = {0, 1, 3}
    fmt = [(lambda v, w=w, i=i: v.ljust(w) if i in left else v.rjust(w)) for i, w in enumerate(widths)]
    return "\n".join("  ".join(f(v) for f, v in zip(fmt, row, strict=True)).rstrip() for row in [header, *body])


def conflicts(rows: Iterable[ResultRow], variant=lambda r: r.variant) -> tuple[list[str], int]:
    """What must never happen, each a bnnmip bug to report loudly: an image–radius pair one variant
    proved robust and another flipped, and an adversarial input onnxruntime did not confirm.
    ``variant`` names a row's method (default ``method/backend``).  Returns the problems and the
    number of image–radius pairs looked at."""
    pairs: dict[tuple, dict[str, ResultRow]] = defaultdict(dict)
    for r in rows:
        pairs[r.model_sha256, r.dataset, r.arch, r.image_index, r.eps_levels][variant(r)] = r
    out = []
    for (_, dataset, arch, image, eps), by_variant in pairs.items():
        robust = sorted(v for v, r in by_variant.items() if str(r.status) == "robust")
        flipped = sorted(v for v, r in by_variant.items() if str(r.status) == "adversarial")
        unverified = sorted(v for v, r in by_variant.items() if str(r.status) == "adversarial" and not r.verified)
        where = f"{dataset} {arch} image {image} at {eps:g}/255"
        if robust and flipped:
            out.append(f"DISAGREEMENT on {where}: robust by {robust}, flipped by {flipped}")
        if unverified:
            out.append(f"UNVERIFIED adversarial input on {where} from {unverified}")
    return out, len(pairs)
