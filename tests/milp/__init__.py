"""Tests of bnnmip.milp: the MILP model, its formulation and LP-tightened bounds."""
