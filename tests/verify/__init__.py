"""Tests of bnnmip.verify: the exact engine, route by route."""
