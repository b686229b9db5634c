"""Builds bnnmip's optional compiled forward kernel (``bnnmip/_kernel.c``); everything else is in pyproject.toml.

When the kernel cannot be built (no C compiler), the install goes on and ``BNN.logits`` uses its
numpy path.
"""

from setuptools import Extension, setup

# -fno-trapping-math and -fno-wrapv (Python's flags set -fwrapv) let the compiler vectorize the
# loops (the kernel never reads floating-point exception flags).  No flag that reorders arithmetic:
# the kernel's rounding bounds are derived for its code as written.
FLAGS = ["-O3", "-std=c99", "-fno-trapping-math", "-fno-wrapv"]

setup(ext_modules=[Extension("bnnmip._kernel", ["bnnmip/_kernel.c"], depends=["bnnmip/_kernel_loops.h"],
                             extra_compile_args=FLAGS, libraries=["m"], optional=True)])
