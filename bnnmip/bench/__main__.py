"""``python -m bnnmip.bench bench|results|plot ...``: the ``bnnmip`` command line under another name."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bnnmip.bench"))
