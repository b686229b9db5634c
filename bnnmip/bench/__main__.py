"""``python -m bnnmip.bench bench|results|plot ...`` (the same subcommands as ``bnnmip``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
