"""The one error hierarchy of bnnmip.

Every problem bnnmip detects is raised as a subclass of :class:`BnnmipError`, with a message
that names the file, node or argument at fault and says what is wrong.  The CLI prints the
message on one line and exits with status 2.
"""

from __future__ import annotations


class BnnmipError(Exception):
    """Base class of every error bnnmip raises on purpose."""


class ModelFileError(BnnmipError):
    """A model file is missing, unreadable, not ONNX, or refers to data it may not read."""


class UnsupportedModelError(BnnmipError):
    """An ONNX graph that bnnmip cannot represent exactly as a BNN (names the node and why)."""


class InvalidArgumentError(BnnmipError, ValueError):
    """A function or command got an argument it cannot use (names the argument)."""


class DatasetNotFoundError(BnnmipError):
    """A dataset is not installed where bnnmip looks; the message says how to install it."""


class SolverError(BnnmipError):
    """A solver backend is missing or failed in a way that is not a normal solve status."""


class ExactnessError(BnnmipError):
    """bnnmip's exact arithmetic disagrees with onnxruntime on the original model."""
