"""Benchmarks: configurations → jobs on Dask → a resumable SQLite results store → tables and plots.

* :func:`load_config` reads a TOML configuration (:mod:`bnnmip.bench.config` documents the keys);
* :func:`expand` turns it into :class:`Job` objects (models × images × ε × methods × backends);
* :func:`run` executes the jobs missing from the results store on a Dask cluster and records each
  one as it finishes (:class:`ResultStore`), so an interrupted run resumes where it stopped;
* :func:`summarize` / :func:`plot_all` read the store back (``bnnmip results`` / ``bnnmip plot``).
"""

from .config import BenchConfig, ImageSelection, ModelSpec, load_config, parse_config
from .jobs import Job, ModelRef, expand
from .plots import plot_all
from .report import format_table, summarize
from .rows import ResultRow, read_csv, write_csv
from .runner import BenchInterrupted, BenchSummary, run
from .store import ResultStore
from .worker import JobResult, execute

__all__ = [
    "BenchConfig",
    "BenchInterrupted",
    "BenchSummary",
    "ImageSelection",
    "Job",
    "JobResult",
    "ModelRef",
    "ModelSpec",
    "ResultRow",
    "ResultStore",
    "execute",
    "expand",
    "format_table",
    "load_config",
    "parse_config",
    "plot_all",
    "read_csv",
    "run",
    "summarize",
    "write_csv",
]
