"""The benchmark's figures (matplotlib, Agg; each written as PNG and SVG).

* ``flip_rate``: flip rate per architecture, one bar per method, a panel per dataset and ε
  (the paper's main figure);
* ``objective_time``: the median anytime curve of each method — best objective
  ``logit[t] - logit[label]`` found by time ``s`` — over the images, a panel per dataset, ε and
  architecture; the band is the inter-quartile range, and a flip needs objective ≥ 0;
* ``backends``: solve time and status counts per solver backend (and method);
* ``certified``: per architecture, the images proved robust (by the exact engine, method
  ``exact``, or by the MILP), those some method
  flipped, and the rest (unknown).  The true flip rate lies between the flipped share and
  1 − the certified share; each method's own flip rate is marked, so the distance from a mark to
  the top of the unknown band is what no attack could beat.

Only correctly classified images count.  Plots never touch pyplot's global state.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..files import open_for_writing
from .report import arch_key, summarize
from .rows import ResultRow

FIGURES = ("flip_rate", "objective_time", "backends", "certified")
_STATUS_COLORS = {"adversarial": "#d62728", "robust": "#2ca02c", "unknown": "#bbbbbb", "error": "#000000"}


def plot_all(rows: list[ResultRow], out: str | os.PathLike) -> list[Path]:
    """Write the four figures into the folder ``out`` (created); returns the files written."""
    rows = [r for r in rows if r.correct]
    if not rows:
        raise InvalidArgumentError("db: no results on correctly classified images to plot")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"-o {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgumentError(f"-o {out}: cannot create the folder ({e.strerror or e})") from None
    colors = _variant_colors(rows)
    figures = {
        "flip_rate": flip_rate_figure(rows, colors),
        "objective_time": objective_time_figure(rows, colors),
        "backends": backends_figure(rows),
        "certified": certified_figure(rows, colors),
    }
    written = []
    for name, fig in figures.items():
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            with open_for_writing(path, text=False) as f:  # never through a link or onto a folder
                fig.savefig(f, format=ext, dpi=130 if ext == "png" else None, bbox_inches="tight")
            written.append(path)
    return written


def _figure(n_rows: int, n_cols: int, width: float = 3.6, height: float = 2.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, width * n_cols), height * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def _variant_colors(rows: list[ResultRow]) -> dict[str, str]:
    from matplotlib import colormaps

    variants = sorted({r.variant for r in rows})
    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _panels(rows: list[ResultRow]) -> list[list[tuple[str, float]]]:
    """The (dataset, ε) panels: a row per dataset, its own radii in columns (datasets may differ)."""
    return [sorted({(ds, r.eps_levels) for r in rows if r.dataset == ds}) for ds in sorted({r.dataset for r in rows})]


def _panel_axes(rows: list[ResultRow], width: float):
    """A figure with an axis per (dataset, ε) panel, and the list of (axis, dataset, ε, column); spare axes hidden."""
    grid = _panels(rows)
    fig, axes = _figure(len(grid), max(len(row) for row in grid), width=width)
    cells = [(axes[i, j], ds, eps, j) for i, row in enumerate(grid) for j, (ds, eps) in enumerate(row)]
    for i, row in enumerate(grid):
        for ax in axes[i, len(row):]:
            ax.set_axis_off()
    return fig, axes, cells


def _eps_label(eps_levels: float) -> str:
    return f"ε = {eps_levels:g}/255"


def _legend(fig, axes, n: int) -> None:
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(n, len(labels)), frameon=False)


def flip_rate_figure(rows: list[ResultRow], colors: dict[str, str]):
    """(a) Flip rate per architecture, a bar per method, a panel per dataset (row) and ε (column)."""
    lines = summarize(rows)
    fig, axes, cells = _panel_axes(rows, width=4.2)
    variants = list(colors)
    for ax, ds, eps, j in cells:
        mine = [s for s in lines if s.dataset == ds and s.eps_levels == eps]
        archs = sorted({s.arch for s in mine}, key=arch_key)
        width = 0.8 / max(1, len(variants))
        for k, v in enumerate(variants):
            rates = {s.arch: s.flip_rate for s in mine if s.variant == v and s.flip_rate is not None}
            if not rates:
                continue
            xs = [a for a, arch in enumerate(archs) if arch in rates]
            ax.bar(np.array(xs) + (k - (len(variants) - 1) / 2) * width, [100 * rates[archs[a]] for a in xs],
                   width, label=v, color=colors[v])
        ax.set_xticks(range(len(archs)), archs, rotation=45, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"{ds}, {_eps_label(eps)}", fontsize=9)
        ax.set_ylabel("flip rate (%)" if j == 0 else "")
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, axes, len(variants))
    fig.suptitle("Flip rate per architecture")
    return fig


def step_values(trace: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    """The anytime curve ``trace`` ((time, best objective), increasing times) sampled on ``grid``.

    The value at ``t`` is that of the last trace point at or before ``t`` (NaN before the first).
    """
    if not trace:
        return np.full(len(grid), np.nan)
    times = np.array([t for t, _ in trace])
    values = np.maximum.accumulate(np.array([f for _, f in trace]))
    idx = np.searchsorted(times, grid, side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)


def _time_span(rows: list[ResultRow]) -> float:
    """The time axis of an anytime panel: up to the longest job (never past the time limit)."""
    longest = max(max(r.time or 0.0, *(t for t, _ in r.trace_points())) for r in rows)
    return max(min(longest * 1.05, max(r.time_limit for r in rows)), 1e-3)


def objective_time_figure(rows: list[ResultRow], colors: dict[str, str], points: int = 200):
    """(b) Median best objective over time per method; a panel per (dataset, ε) row and architecture."""
    rows = [r for r in rows if r.status != "error" and r.trace not in ("", "[]")]
    if not rows:
        fig, axes = _figure(1, 1)
        axes[0, 0].text(0.5, 0.5, "no anytime traces recorded", ha="center", va="center")
        return fig
    row_keys = [key for row in _panels(rows) for key in row]
    archs = sorted({r.arch for r in rows}, key=arch_key)
    fig, axes = _figure(len(row_keys), len(archs), width=3.2, height=2.5)
    for i, (ds, eps) in enumerate(row_keys):
        for j, arch in enumerate(archs):
            ax = axes[i, j]
            mine = [r for r in rows if r.dataset == ds and r.eps_levels == eps and r.arch == arch]
            ax.set_title(f"{ds} {arch}, {_eps_label(eps)}", fontsize=8)
            if not mine:
                ax.set_axis_off()
                continue
            grid = np.linspace(0.0, _time_span(mine), points)
            by_variant = defaultdict(list)
            for r in mine:
                by_variant[r.variant].append(step_values(r.trace_points(), grid))
            for v, curves in sorted(by_variant.items()):
                Y = np.array(curves)
                with warnings.catch_warnings():  # before a method's first incumbent every curve is NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, med, hi = np.nanpercentile(Y, [25, 50, 75], axis=0)
                ax.plot(grid, med, drawstyle="steps-post", color=colors[v], label=v, lw=1.4)
                ax.fill_between(grid, lo, hi, step="post", color=colors[v], alpha=0.15, lw=0, rasterized=True)
            ax.axhline(0.0, color="k", lw=0.6, ls=":")
            ax.tick_params(labelsize=7)
            ax.set_xlabel("seconds" if i == len(row_keys) - 1 else "", fontsize=8)
            ax.set_ylabel("best objective" if j == 0 else "", fontsize=8)
    _legend(fig, axes, len(colors))
    fig.suptitle("Best objective over time (median over images, inter-quartile band; a flip needs ≥ 0)")
    return fig


def backends_figure(rows: list[ResultRow]):
    """(c) Per solver method and backend: distribution of solve times, and status counts."""
    solver_rows = [r for r in rows if r.backend is not None]
    fig, axes = _figure(1, 2, width=5.0, height=3.4)
    ax_time, ax_status = axes[0]
    if not solver_rows:
        for ax in (ax_time, ax_status):
            ax.text(0.5, 0.5, "no solver jobs", ha="center", va="center")
        return fig
    variants = sorted({r.variant for r in solver_rows})
    times = [[r.time for r in solver_rows if r.variant == v and r.time is not None and r.status != "error"]
             for v in variants]
    positions = [k for k, t in enumerate(times) if t]
    if positions:
        ax_time.boxplot([times[k] for k in positions], positions=positions, widths=0.6)
    ax_time.set_xticks(range(len(variants)), variants, rotation=30, fontsize=8)
    ax_time.set_ylabel("time per job (s)")
    ax_time.set_title("solve time", fontsize=9)
    ax_time.grid(axis="y", alpha=0.3)
    bottom = np.zeros(len(variants))
    for status, color in _STATUS_COLORS.items():
        counts = np.array([sum(r.status == status for r in solver_rows if r.variant == v) for v in variants])
        if counts.any():
            ax_status.bar(range(len(variants)), counts, 0.6, bottom=bottom, color=color, label=status)
            bottom += counts
    ax_status.set_xticks(range(len(variants)), variants, rotation=30, fontsize=8)
    ax_status.set_ylabel("jobs")
    ax_status.set_title("status", fontsize=9)
    _legend(fig, axes, 4)
    fig.suptitle("Solver backends")
    return fig


def certified_outcomes(rows: list[ResultRow]) -> dict[tuple, str]:
    """Per image ((dataset, arch, model sha, eps, image index)): 'flipped', 'certified' or 'unknown'.

    Flipped: some method found an adversarial input; certified: a method proved it robust (``exact``,
    ``milp`` or ``best``: only complete proofs answer 'robust').
    """
    outcome: dict[tuple, str] = {}
    for r in rows:
        if r.status == "error":
            continue
        key = (r.dataset, r.arch, r.model_sha256, r.eps_levels, r.image_index)
        if r.flipped:
            outcome[key] = "flipped"
        elif r.status == "robust" and outcome.get(key) != "flipped":
            outcome[key] = "certified"
        else:
            outcome.setdefault(key, "unknown")
    return outcome


def certified_figure(rows: list[ResultRow], colors: dict[str, str]):
    """(d) Certified robust / flipped / unknown per architecture, with each method's flip rate marked."""
    outcomes = certified_outcomes(rows)
    lines = summarize(rows)
    fig, axes, cells = _panel_axes(rows, width=4.2)
    stack = (("flipped", _STATUS_COLORS["adversarial"]), ("unknown", _STATUS_COLORS["unknown"]),
             ("certified", _STATUS_COLORS["robust"]))
    for ax, ds, eps, j in cells:
        archs = sorted({k[1] for k in outcomes if k[0] == ds and k[3] == eps}, key=arch_key)
        shares = {name: np.zeros(len(archs)) for name, _ in stack}
        for a, arch in enumerate(archs):
            mine = [o for k, o in outcomes.items() if k[0] == ds and k[1] == arch and k[3] == eps]
            for name, _ in stack:
                shares[name][a] = 100 * mine.count(name) / len(mine)
        bottom = np.zeros(len(archs))
        for name, color in stack:
            ax.bar(range(len(archs)), shares[name], 0.7, bottom=bottom, color=color, label=name, alpha=0.85)
            bottom += shares[name]
        for m, (v, color) in enumerate(colors.items()):
            rates = {s.arch: s.flip_rate for s in lines
                     if s.dataset == ds and s.eps_levels == eps and s.variant == v and s.flip_rate is not None}
            xs = [a for a, arch in enumerate(archs) if arch in rates]
            if xs:
                offset = 0.6 * ((m + 0.5) / len(colors) - 0.5)
                ax.scatter(np.array(xs) + offset, [100 * rates[archs[a]] for a in xs], marker="_",
                           s=max(40, 300 / len(colors)), color=color, linewidths=2.5, label=f"{v} flip rate",
                           zorder=3)
        ax.set_xticks(range(len(archs)), archs, rotation=45, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("images (%)" if j == 0 else "")
        ax.set_title(f"{ds}, {_eps_label(eps)}", fontsize=9)
    _legend(fig, axes, 4)
    fig.suptitle("Certified robust (MILP) vs flipped (any method) vs unknown; marks: each method's flip rate")
    return fig
