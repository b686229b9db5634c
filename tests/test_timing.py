"""bnnmip.timing: the one validator of ``time_limit`` and the :class:`Deadline` every stage counts against."""

from __future__ import annotations

import math
import time

import pytest

from bnnmip import InvalidArgumentError
from bnnmip.timing import Deadline, check_time_limit


@pytest.mark.parametrize("value, expected", [(None, None), (2, 2.0), (0.25, 0.25), ("1.5", 1.5)])
def test_check_time_limit_accepts_positive_seconds(value, expected):
    assert check_time_limit(value) == expected


@pytest.mark.parametrize("value, fragment", [
    (0, "positive number of seconds"), (-1.0, "positive number of seconds"), (math.nan, "positive number"),
    ("soon", "expected a number of seconds"), ([1], "expected a number of seconds"),
])
def test_check_time_limit_names_what_is_wrong(value, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment) as info:
        check_time_limit(value)
    assert str(info.value).startswith(f"time_limit={value!r}")


def test_an_unlimited_deadline_never_expires():
    d = Deadline.start(None)
    assert not d.limited and d.remaining() == math.inf and d.seconds_left() is None
    assert not d.expired(reserve=1e9)
    assert d.elapsed() >= 0


def test_a_deadline_counts_down_from_its_start():
    d = Deadline.start(0.2)
    assert d.limited and 0 < d.seconds_left() <= 0.2 and not d.expired()
    assert d.expired(reserve=0.3)  # fewer than 0.3 s are left
    time.sleep(0.25)
    assert d.expired() and d.remaining() < 0 and d.elapsed() >= 0.25
    with pytest.raises(InvalidArgumentError, match="time_limit=0"):
        Deadline.start(0)


def test_a_sub_budget_never_outlives_its_parent():
    now = time.perf_counter()
    parent = Deadline(now, now + 10.0)
    assert parent.within(3.0).end <= time.perf_counter() + 3.0
    assert parent.within(100.0).end == parent.end  # capped by the parent
    half = parent.within(share=0.5)
    assert half.end <= parent.end and half.remaining() == pytest.approx(5.0, abs=0.1)
    assert parent.within(-1.0).expired()  # a negative request is an empty budget, not an error
    unlimited = Deadline.start(None)
    assert not unlimited.within(share=0.5).limited  # a share of no limit is no limit
    assert unlimited.within(2.0).limited and unlimited.within(2.0).remaining() <= 2.0


def test_a_shortened_deadline_keeps_its_start():
    d = Deadline(100.0, 110.0)
    short = d.shortened(0.15)
    assert short.t0 == d.t0 and short.end == pytest.approx(109.85)
    assert Deadline(1.0).shortened(5.0).end == math.inf  # an unlimited one stays unlimited
