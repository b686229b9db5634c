"""The ``bnnmip`` command line: :func:`main`.

Every bnnmip error becomes one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import sys

from ..errors import BnnmipError
from .parser import build_parser


def main(argv: list[str] | None = None, prog: str = "bnnmip") -> int:
    """Parse ``argv`` and run the chosen command: a bnnmip error is one line on stderr, exit 2."""
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except BnnmipError as e:
        print(f"bnnmip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnnmip: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
