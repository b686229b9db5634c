"""The one error hierarchy of bnnmip.

Every problem bnnmip detects is raised as a subclass of :class:`BnnmipError`, with a message
that names the file, node or argument at fault and says what is wrong.  The CLI prints the
message on one line and exits with status 2.

A message is one line whatever went into it: file names, node names and text read from a model
are interpolated into messages, so :func:`one_line` escapes every control or format character
(newlines, ANSI escape sequences, bidirectional overrides) when the error is made.  A hostile
file name cannot forge a second line or recolour the terminal.
"""

from __future__ import annotations

import unicodedata

# Unicode categories that can move the cursor, break the line or reorder what is shown.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def one_line(text: str) -> str:
    """``text`` with every control/format character escaped (``\\n``, ``\\x1b``, ``\\u202e``): one safe line."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


class BnnmipError(Exception):
    """Base class of every error bnnmip raises on purpose; its message is always one safe line."""

    def __init__(self, *args):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


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


class StoreError(BnnmipError):
    """A results database bnnmip may not change (foreign, newer schema) or cannot read or write."""
