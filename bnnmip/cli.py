"""The ``bnnmip`` command line: ``info``, ``predict``, ``attack``, ``export``, ``minimal-eps``, ``bench``.

Every bnnmip error becomes one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import BnnmipError, InvalidArgumentError


def _load(args) -> object:
    from .io.onnx_reader import load_onnx

    return load_onnx(args.model, levels=getattr(args, "levels", None))


def default_data(model: str | Path) -> Path | None:
    """The shipped test slice named for ``model`` in the ``manifest.json`` beside it, if any."""
    model = Path(model)
    manifest = model.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text())["models"]
    except (ValueError, KeyError, TypeError):
        return None
    for entry in entries:
        if entry.get("file") == model.name and entry.get("slice"):
            return model.parent / entry["slice"]
    return None


def _data(args):
    from .io.datasets import load_npz

    path = args.data or default_data(args.model)
    if path is None:
        raise InvalidArgumentError("--data: no data file given and no manifest.json slice next to the model")
    return load_npz(path)


def cmd_info(args) -> int:
    net = _load(args)
    print(net.summary())
    return 0


def cmd_predict(args) -> int:
    from .io.runtime import check_onnx

    net = _load(args)
    data = _data(args)
    X = data.inputs()[: args.limit]
    labels = data.labels[: args.limit]
    t0 = time.perf_counter()
    pred = net.predict(X)
    elapsed = time.perf_counter() - t0
    print(f"model      {args.model}")
    print(f"data       {data.name}: {len(X)} images")
    print(f"accuracy   {np.mean(pred == labels):.4f}  ({int(np.sum(pred == labels))}/{len(X)})")
    print(f"time       {elapsed * 1e3:.1f} ms ({len(X) / max(elapsed, 1e-9):,.0f} images/s)")
    check = check_onnx(net, None, X)
    print(f"onnxruntime {check}")
    return 0 if check.ok else 1


def _one_image(args) -> tuple[object, object, np.ndarray, int]:
    """(network, data slice, input, true label) for the commands that work on one ``--index``."""
    net, data = _load(args), _data(args)
    return (net, data, *_image(args, data))


def _image(args, data) -> tuple[np.ndarray, int]:
    """The input ``--index`` of the data slice (in [0, 1]) and its true label."""
    if not 0 <= args.index < len(data):
        raise InvalidArgumentError(f"--index {args.index}: {data.name} has images 0..{len(data) - 1}")
    return data.images[args.index].astype(np.float64) / 255.0, int(data.labels[args.index])


def _eps(text: str) -> float:
    """``--eps``: a number (0.02) or a fraction of grid steps (2/255)."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"invalid eps {text!r}: expected a number such as 0.02 or 2/255") from None


def _header(args, data, label: int) -> None:
    print(f"model      {args.model}")
    print(f"image      #{args.index} of {data.name} (true class {label})")


def cmd_attack(args) -> int:
    from .attacks import attack

    net, data, x, true_label = _one_image(args)
    options = {}
    if args.bounds != "interval":
        if args.method != "milp":
            raise InvalidArgumentError(f"--bounds {args.bounds}: only --method milp uses bounds")
        options["bounds"] = args.bounds
    result = attack(net, x, args.eps, method=args.method, target=args.target, time_limit=args.time_limit,
                    backend=args.backend, **options)
    if result.x_adv is not None and not np.isfinite(result.details.get("linf", np.nan)):
        result.details["linf"] = float(np.abs(result.x_adv - x).max())  # chained attacks drop it
    _header(args, data, true_label)
    print(result.summary())
    verified = "yes (onnxruntime on the original ONNX file)" if result.verified else "no"
    print(f"{'verified':<10} {verified}")
    return 0


def cmd_export(args) -> int:
    from .milp.formulation import attack_milp

    net, data, x, true_label = _one_image(args)
    t0 = time.perf_counter()
    model = attack_milp(net, x, args.eps, args.target, bounds=args.bounds)
    built = time.perf_counter() - t0
    path = model.write(args.output)
    written = time.perf_counter() - t0 - built
    bounds = model.info["encoding"].bounds
    fixed = sum(len(b.fixed) - b.n_free for b in bounds)
    _header(args, data, true_label)
    print(f"wrote      {path} ({path.stat().st_size:,} bytes, {written:.2f} s)")
    print(f"model      {model.num_rows} rows, {model.num_cols} columns ({model.num_binary} binary, "
          f"{model.num_integer - model.num_binary} other integer), {model.nnz} nonzeros")
    print(f"fixed      {fixed} of {sum(len(b.fixed) for b in bounds)} units fixed by {args.bounds} bounds "
          f"(built in {built:.2f} s)")
    print(f"objective  {model.sense} logit[{args.target}] - logit[{model.info['encoding'].label}]")
    return 0


def cmd_minimal_eps(args) -> int:
    from .attacks.minimal_eps import minimal_eps

    net, data, x, true_label = _one_image(args)
    result = minimal_eps(net, x, levels=args.levels, time_limit=args.time_limit, backend=args.backend,
                         bounds=args.bounds)
    _header(args, data, true_label)
    print(result.summary())
    return 0


def _add_problem_args(p: argparse.ArgumentParser, *, eps: bool = True, grid_choice: bool = True) -> None:
    p.add_argument("model", help="ONNX file")
    p.add_argument("--data", help=".npz with images (n, 784) uint8 and labels (default: the model's shipped slice)")
    p.add_argument("--index", type=int, required=True, help="which image of the data (0-based)")
    if eps:
        p.add_argument("--eps", type=_eps, required=True, help="L-infinity radius, e.g. 0.02 or 2/255")
    p.add_argument("--bounds", choices=("interval", "lp"), default="interval",
                   help="big-M bounds: interval (default) or tightened by LP relaxation")
    grid = p.add_mutually_exclusive_group() if grid_choice else p
    grid.add_argument("--levels", type=int, default=255, help="input grid of N steps (default 255: 8-bit images)")
    if grid_choice:
        grid.add_argument("--continuous", dest="levels", action="store_const", const=None,
                          help="perturb continuously instead of on the grid")


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("highs", "scip", "cvxpy"), default="highs", help="MILP solver (default highs)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds (default 60)")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr and exit status 2 (as for bnnmip errors)."""

    def error(self, message: str):
        self.exit(2, f"bnnmip: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bnnmip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="summarise a BNN loaded from ONNX")
    p.add_argument("model", help="ONNX file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="accuracy on a data slice and agreement with onnxruntime")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--data", help=".npz with images (n, 784) uint8 and labels (default: the model's shipped slice)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("attack", help="attack one image: adversarial example, proof of robustness, or unknown")
    _add_problem_args(p)
    p.add_argument("--target", type=int, default=None, help="target class (default: any other class)")
    p.add_argument("--method", choices=("milp", "pgd", "iprop", "iprop+pgd", "best"), default="best",
                   help="attack (default best: PGD, then IProp, then the exact MILP)")
    _add_solver_args(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("export", help="write the attack MILP for one image and target as .mps or .lp")
    _add_problem_args(p)
    p.add_argument("--target", type=int, required=True, help="target class")
    p.add_argument("-o", "--output", required=True, help="FILE.mps or FILE.lp")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("minimal-eps", help="smallest L-infinity radius on the grid that changes the prediction")
    _add_problem_args(p, eps=False, grid_choice=False)
    _add_solver_args(p)
    p.set_defaults(func=cmd_minimal_eps)

    from .bench.cli import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen subcommand: a bnnmip error is one line on stderr, exit 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BnnmipError as e:
        print(f"bnnmip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnnmip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
