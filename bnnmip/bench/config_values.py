"""Validators of benchmark-configuration values: each returns the clean value or raises
:class:`~bnnmip.InvalidArgumentError` naming the key at fault."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..backends import require_backend
from ..errors import BnnmipError, InvalidArgumentError
from ..milp.backend import backend_names
from ..timing import check_time_limit
from ..validate import check_choice

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def check_keys(table: Mapping, allowed: set[str], prefix: str) -> None:
    for k in table:
        if k not in allowed:
            raise InvalidArgumentError(f"{prefix}{k}: unknown key; expected one of {sorted(allowed)}")


def check_backends(backends: tuple[str, ...]) -> None:
    if not backends:
        raise InvalidArgumentError("backends: empty; the solver methods need at least one backend")
    for i, b in enumerate(backends):
        check_choice(b, backend_names(), f"backends[{i}]")
        try:
            require_backend(b)
        except BnnmipError as e:
            raise InvalidArgumentError(f"backends[{i}]={b!r}: {e}") from None


def nonempty_string(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{key}={value!r}: expected a non-empty string")
    return value


def plain_name(value, key: str) -> str:
    """A name that is also a safe file name: letters, digits, ``._+-``, not starting with a dot, at most 100."""
    if not isinstance(value, str) or not _PLAIN_NAME.match(value):
        raise InvalidArgumentError(f"{key}={value!r}: expected a plain name (letters, digits, '._+-', not starting "
                                   "with '.' or '-', at most 100 characters)")
    return value


def time_limit_value(value, key: str) -> float:
    """Seconds per job: a positive number up to :data:`~bnnmip.timing.MAX_TIME_LIMIT`."""
    if not is_number(value):
        raise InvalidArgumentError(f"{key}={value!r}: expected a positive number")
    return check_time_limit(value)


def string_list(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidArgumentError(f"{key}={value!r}: expected a non-empty list of strings")
    return tuple(nonempty_string(v, f"{key}[{i}]") for i, v in enumerate(value))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eps_list(d: Mapping, levels: int, prefix: str = "") -> tuple[float, ...]:
    if ("eps" in d) == ("eps_levels" in d):
        raise InvalidArgumentError(f"{prefix}eps: give exactly one of eps = [...] (radii) or eps_levels = [...] "
                                   "(pixel levels)")
    key = prefix + ("eps" if "eps" in d else "eps_levels")
    d = {key: d["eps" if "eps" in d else "eps_levels"]}
    values = d[key] if isinstance(d[key], list) else [d[key]]
    if not values:
        raise InvalidArgumentError(f"{key}: empty list")
    out = []
    for i, v in enumerate(values):
        if not is_number(v) or v <= 0:
            raise InvalidArgumentError(f"{key}[{i}]={v!r}: expected a positive number")
        eps = float(v) / levels if key.endswith("eps_levels") else float(v)
        if eps > 1:
            raise InvalidArgumentError(f"{key}[{i}]={v!r}: ε = {eps:g} exceeds the input range [0, 1]")
        out.append(eps)
    return tuple(dict.fromkeys(out))


def target_list(value) -> tuple[int | None, ...]:
    if value is None:
        return (None,)
    if not isinstance(value, list) or not value:
        raise InvalidArgumentError(f"targets={value!r}: expected a non-empty list of class indices")
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise InvalidArgumentError(f"targets[{i}]={t!r}: expected a class index (integer >= 0)")
    return tuple(dict.fromkeys(value))
