"""The ``bnnmip`` command line: :func:`main`.

Every bnnmip error becomes one line on stderr and exit status 2; no traceback.  The line is safe to
show: :class:`~bnnmip.errors.BnnmipError` escapes control characters in whatever file or node
names it holds, and so does the usage error of the parser.  numpy's floating-point warnings (an
overflow bnnmip's own checks then refuse or that onnxruntime judges) are kept off stderr, as is
onnxruntime's own log (see :mod:`bnnmip.io.runtime`).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from ..errors import BnnmipError
from .parser import build_parser


def main(argv: list[str] | None = None, prog: str = "bnnmip") -> int:
    """Parse ``argv`` and run the chosen command: a bnnmip error is one line on stderr, exit 2."""
    args = build_parser(prog).parse_args(argv)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return args.func(args)
    except BnnmipError as e:
        print(f"bnnmip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnnmip: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
