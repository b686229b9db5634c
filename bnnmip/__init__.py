"""bnnmip: attack and verify binarized neural networks with integer programming.

Load a BNN from ONNX with :func:`load_onnx`; its exact forward pass is checked against
onnxruntime by :func:`check_onnx`; :func:`interval_bounds` gives the big-M constants.
"""

from .bounds import LayerBounds, interval_bounds
from .errors import (
    BnnmipError,
    DatasetNotFoundError,
    ExactnessError,
    InvalidArgumentError,
    ModelFileError,
    SolverError,
    UnsupportedModelError,
)
from .io import datasets
from .io.onnx_reader import load_onnx
from .io.runtime import OnnxCheck, check_onnx, onnx_logits
from .network import BNN, InputBinarization, Layer

__version__ = "0.1.0"

__all__ = [
    "BNN",
    "BnnmipError",
    "DatasetNotFoundError",
    "ExactnessError",
    "InputBinarization",
    "InvalidArgumentError",
    "Layer",
    "LayerBounds",
    "ModelFileError",
    "OnnxCheck",
    "SolverError",
    "UnsupportedModelError",
    "check_onnx",
    "datasets",
    "interval_bounds",
    "load_onnx",
    "onnx_logits",
]
