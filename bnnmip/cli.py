"""The ``bnnmip`` command line: ``info``, ``predict`` (and, as they land, ``attack``, ``export``, ``bench``).

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnnmip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="summarise a BNN loaded from ONNX")
    p.add_argument("model", help="ONNX file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="accuracy on a data slice and agreement with onnxruntime")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--data", help=".npz with images (n, 784) uint8 and labels (default: the model's shipped slice)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.set_defaults(func=cmd_predict)

    from .bench.cli import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
