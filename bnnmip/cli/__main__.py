"""``python -m bnnmip.cli``: the ``bnnmip`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
