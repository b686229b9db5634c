"""Tests of bnnmip.bench and the smoke runs of the benchmarks/ scripts."""
