"""The one parser of the ``bnnmip`` command line (``python -m bnnmip.bench`` uses it too).

Choices are read from where they are defined (attack methods, registered backends, bound modes),
never retyped here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks import METHODS
from ..box import DEFAULT_LEVELS
from ..errors import one_line
from ..milp.backend import backend_names
from ..milp.formulation import BOUNDS
from ..verify import ROUTES
from ..version import __version__
from .bench_commands import cmd_bench, cmd_plot, cmd_results
from .commands import cmd_attack, cmd_export, cmd_info, cmd_minimal_eps, cmd_predict, cmd_verify

DESCRIPTION = "Attack and verify binarized neural networks with integer programming."
_CONFIG_HELP = ("only the jobs of this configuration (TOML), for a database that holds several: "
                "one store computes a job shared by two configurations once")


def _eps(text: str) -> float:
    """``--eps``: a number (0.02) or a fraction of grid steps (2/255)."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"invalid eps {text!r}: expected a number such as 0.02 or 2/255") from None


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr and exit status 2 (as for bnnmip errors)."""

    def error(self, message: str):
        self.exit(2, f"bnnmip: error: {one_line(message)} (see {one_line(self.prog)} --help)\n")


def _add_problem_args(p: argparse.ArgumentParser, *, eps: bool = True, grid_choice: bool = True) -> None:
    p.add_argument("model", help="ONNX file")
    p.add_argument("--data", help=".npz with images (n, 784) uint8 and labels (default: the model's shipped slice)")
    p.add_argument("--index", type=int, required=True, help="which image of the data (0-based)")
    if eps:
        radius = p.add_mutually_exclusive_group(required=True)
        radius.add_argument("--eps", type=_eps,
                            help="L-infinity radius, e.g. 0.02 or 2/255; on the grid it is rounded down to whole "
                                 "steps (0.02 searches 5/255 = 0.0196), and the output says which")
        radius.add_argument("--eps-steps", type=int, metavar="K",
                            help="L-infinity radius in grid steps: K/255 of the input range by default")
        p.add_argument("--allow-zero", action="store_true",
                       help="accept a radius of 0 steps (a check of the clean input alone; an error otherwise)")
    p.add_argument("--bounds", choices=BOUNDS, default=BOUNDS[0],
                   help="big-M bounds: interval (default) or tightened by LP relaxation")
    grid = p.add_mutually_exclusive_group() if grid_choice else p
    grid.add_argument("--levels", type=int, default=DEFAULT_LEVELS,
                      help=f"input grid of N steps (default {DEFAULT_LEVELS}: 8-bit images)")
    if grid_choice:
        grid.add_argument("--continuous", dest="levels", action="store_const", const=None,
                          help="perturb continuously instead of on the grid")


def _add_route_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=ROUTES, default="auto",
                   help="exact engine route (default auto: enumeration, branch-and-bound, CP-SAT or MILP per instance)")


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=backend_names(), default="highs", help="MILP solver (default highs)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds (default 60)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """What the commands that attack or verify one image share: misclassified images, --save, progress."""
    p.add_argument("--allow-misclassified", action="store_true",
                   help="attack an image the network already misclassifies (refused otherwise)")
    p.add_argument("--save", metavar="DIR",
                   help="write result.json, x.npy and, for a flip, x_adv.npy and triptych.png into DIR")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a live line on stderr (incumbent, bound, elapsed) once a solve takes more than "
                        "1.5 s (default: when stderr is a terminal)")


def _add_model_commands(sub) -> None:
    p = sub.add_parser("info", help="summarise a BNN loaded from ONNX")
    p.add_argument("model", help="ONNX file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="accuracy on a data slice and agreement with onnxruntime")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--data", help=".npz with images (n, 784) uint8 and labels (default: the model's shipped slice)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("attack", help="attack one image: adversarial example, proof of robustness, or unknown",
                       description="Attack one image at an L-infinity radius: 'adversarial' (re-checked by "
                                   "onnxruntime), 'robust' (a proof: no input in the box changes the prediction) "
                                   "or 'unknown'. The README explains every line of the output.")
    _add_problem_args(p)
    p.add_argument("--target", type=int, default=None, help="target class (default: any other class)")
    p.add_argument("--method", choices=tuple(METHODS), default="best",
                   help="attack (default best: PGD, then IProp, then the exact engine of bnnmip.verify)")
    _add_solver_args(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("export", help="write the attack MILP for one image and target as .mps or .lp")
    _add_problem_args(p)
    p.add_argument("--target", type=int, required=True, help="target class")
    p.add_argument("-o", "--output", required=True, help="FILE.mps or FILE.lp")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="decide exactly: a proof that no input in the box changes the prediction, "
                                      "or an adversarial input",
                       description="Decide exactly whether some input within the radius changes the prediction: "
                                   "'robust' with a complete proof (which one is printed), 'adversarial' with an "
                                   "input onnxruntime confirms, or 'unknown' when the time runs out.")
    _add_problem_args(p)
    _add_route_arg(p)
    _add_solver_args(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("minimal-eps", help="smallest L-infinity radius on the grid that changes the prediction",
                       description="The exact smallest radius, in grid steps, at which some input changes the "
                                   "prediction: a verified flip at that radius and a proof one step below.")
    _add_problem_args(p, eps=False, grid_choice=False)
    _add_route_arg(p)
    _add_solver_args(p)
    _add_run_args(p)
    p.set_defaults(func=cmd_minimal_eps)


def _add_bench_commands(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark configuration (resumable, on Dask)",
                       description="Run every job of a TOML benchmark configuration that the results "
                                   "database does not hold yet.")
    p.add_argument("config", help="benchmark configuration (TOML), e.g. benchmarks/configs/smoke.toml")
    p.add_argument("--db", help="SQLite results database (default: the config's db, else <name>.sqlite here)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="local worker processes (default: cores // threads per job)")
    group.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--retry-errors", action="store_true",
                   help="run again the jobs recorded with status 'error' (default: they count as finished)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("results", help="summarise or export a benchmark's results database")
    p.add_argument("db", help="SQLite results database")
    p.add_argument("--csv", action="store_true", help="export every row as CSV")
    p.add_argument("-o", "--output", help="CSV file to write (default: stdout)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("plot", help="draw a benchmark's figures (PNG and SVG)")
    p.add_argument("db", help="SQLite results database")
    p.add_argument("-o", "--out", type=Path, default=Path("plots"), help="output folder (default: plots)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_plot)


def build_parser(prog: str = "bnnmip") -> argparse.ArgumentParser:
    """The parser of every ``bnnmip`` command."""
    parser = _Parser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"bnnmip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_model_commands(sub)
    _add_bench_commands(sub)
    return parser
