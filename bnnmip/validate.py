"""Argument validators shared by every public function: each returns the clean value or raises
:class:`~bnnmip.errors.InvalidArgumentError` naming the argument and what it expects."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .errors import InvalidArgumentError


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_eps(eps, name: str = "eps") -> float:
    """A finite radius >= 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name}={eps!r}: expected a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name}={eps!r}: expected a finite number >= 0")
    return value


MAX_LEVELS = 2**24
"""The finest input grid bnnmip accepts: grid indices stay exact in float32 and int64 arithmetic."""


def check_levels(levels, name: str = "levels") -> int | None:
    """A number of grid steps in 1..:data:`MAX_LEVELS`, or None (continuous inputs)."""
    if levels is None:
        return None
    if not _is_int(levels) or not 1 <= levels <= MAX_LEVELS:
        raise InvalidArgumentError(f"{name}={levels!r}: expected a positive integer up to {MAX_LEVELS:,} or None")
    return int(levels)


def check_positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise InvalidArgumentError(f"{name}={value!r}: expected a positive integer")
    return int(value)


MAX_THREADS = 256
"""Solver threads of one solve: more is a typo (and can exhaust the process's threads)."""


def check_threads(value, name: str = "threads") -> int | None:
    """Solver threads: an integer in 1..:data:`MAX_THREADS`, or None (the solver's default)."""
    if value is not None and (not _is_int(value) or not 1 <= value <= MAX_THREADS):
        raise InvalidArgumentError(f"{name}={value!r}: expected an integer in 1..{MAX_THREADS} or None")
    return None if value is None else int(value)


def check_optional_positive_int(value, name: str) -> int | None:
    return None if value is None else check_positive_int(value, name)


def check_seed(seed, name: str = "seed") -> int | None:
    """A non-negative integer seed, or None."""
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise InvalidArgumentError(f"{name}={seed!r}: expected a non-negative integer or None")
    return None if seed is None else int(seed)


def check_class(value, n_classes: int, name: str = "target") -> int:
    """A class index in ``0..n_classes - 1``."""
    if not _is_int(value):
        raise InvalidArgumentError(f"{name}={value!r}: expected a class index (int)")
    if not 0 <= value < n_classes:
        raise InvalidArgumentError(f"{name}={value}: expected a class in 0..{n_classes - 1}")
    return int(value)


def check_choice(value, choices: Iterable[str], name: str) -> str:
    """One of ``choices``."""
    options = sorted(choices)
    if not isinstance(value, str) or value not in options:
        raise InvalidArgumentError(f"{name}={value!r}: expected one of {options}")
    return value


def check_fraction(value, name: str) -> float:
    """A number in (0, 1]."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
            or not 0 < float(value) <= 1:
        raise InvalidArgumentError(f"{name}={value!r}: expected a number in (0, 1]")
    return float(value)
