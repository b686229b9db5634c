"""Tests of bnnmip.backends: every registered backend, its capabilities and the solve template."""
