"""Tests of bnnmip.io: the ONNX reader, the datasets and the shipped model zoo."""
