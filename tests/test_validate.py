"""bnnmip.validate: each validator returns the clean value, or raises an InvalidArgumentError that names
the argument, the value and what it expects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnnmip import InvalidArgumentError
from bnnmip.validate import (
    MAX_LEVELS,
    check_choice,
    check_class,
    check_eps,
    check_fraction,
    check_levels,
    check_optional_positive_int,
    check_positive_int,
    check_seed,
)

# (validator, good values -> what comes back, bad values, how the message starts)
CASES = [
    (check_eps, [(0, 0.0), (0.5, 0.5), (np.float32(0.25), 0.25), ("0.1", 0.1)],
     [-0.1, math.nan, math.inf, "small", None], "eps="),
    (check_levels, [(None, None), (1, 1), (255, 255), (np.int64(7), 7), (MAX_LEVELS, MAX_LEVELS)],
     [0, -3, MAX_LEVELS + 1, 2.5, True, "255"], "levels="),
    (lambda v: check_positive_int(v, "restarts"), [(1, 1), (np.int32(8), 8)], [0, -1, 1.0, True, None],
     "restarts="),
    (lambda v: check_optional_positive_int(v, "workers"), [(None, None), (3, 3)], [0, 2.5, False],
     "workers="),
    (check_seed, [(None, None), (0, 0), (np.uint8(7), 7)], [-1, 1.5, True, "7"], "seed="),
    (lambda v: check_class(v, 10), [(0, 0), (9, 9), (np.int64(3), 3)], [10, -1, 1.5, True, "3"], "target="),
    (lambda v: check_choice(v, ("interval", "lp"), "bounds"), [("lp", "lp"), ("interval", "interval")],
     ["tight", "LP", None, ["lp"]], "bounds="),
    (lambda v: check_fraction(v, "share"), [(1, 1.0), (0.5, 0.5), (np.float64(0.1), 0.1)],
     [0, 1.5, -0.5, True, "0.5", math.nan], "share="),
]


@pytest.mark.parametrize("validator, good, bad, prefix", CASES, ids=[
    "eps", "levels", "positive_int", "optional_positive_int", "seed", "class", "choice", "fraction"])
def test_validators(validator, good, bad, prefix):
    for value, expected in good:
        got = validator(value)
        assert got == expected and type(got) is type(expected), f"{value!r} -> {got!r}"
    for value in bad:
        with pytest.raises(InvalidArgumentError) as info:
            validator(value)
        message = str(info.value)
        assert message.startswith(prefix) and "expected" in message and "\n" not in message, message


def test_messages_say_what_is_expected():
    with pytest.raises(InvalidArgumentError, match=r"levels=0: expected .*16,777,216 or None"):
        check_levels(0)
    with pytest.raises(InvalidArgumentError, match=r"target=10: expected a class in 0\.\.9"):
        check_class(10, 10)
    with pytest.raises(InvalidArgumentError, match=r"bounds='tight': expected one of \['interval', 'lp'\]"):
        check_choice("tight", ("lp", "interval"), "bounds")
    with pytest.raises(InvalidArgumentError, match=r"radius=-1: expected a finite number >= 0"):
        check_eps(-1, "radius")
