"""Time limits: one validator and one :class:`Deadline` type for every budget in bnnmip.

A budget is given by users as ``time_limit`` seconds (``None``: no limit) and lives inside bnnmip
as a :class:`Deadline`: the moment it started and the moment it ends on ``time.perf_counter()``'s
clock, so every stage (bounds, model build, solve, onnxruntime re-check) counts against it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .errors import InvalidArgumentError

MAX_TIME_LIMIT = 10**7
"""The longest time limit accepted, in seconds (about 16 weeks): longer is a typo, and ``inf`` would
let an attack that restarts until its time is up (PGD) run forever.  ``None`` is the way to ask for
no limit, where a method has a budget of its own."""


def check_time_limit(time_limit) -> float | None:
    """``time_limit`` as positive finite seconds up to :data:`MAX_TIME_LIMIT`, or None (no limit)."""
    if time_limit is None:
        return None
    try:
        value = float(time_limit)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"time_limit={time_limit!r}: expected a number of seconds") from None
    if not value > 0 or math.isnan(value):
        raise InvalidArgumentError(f"time_limit={time_limit!r}: expected a positive number of seconds")
    if value > MAX_TIME_LIMIT:
        raise InvalidArgumentError(f"time_limit={time_limit!r}: over bnnmip's limit of {MAX_TIME_LIMIT:,} seconds "
                                   "(for no limit, give None where the method allows it)")
    return value


@dataclass(frozen=True)
class Deadline:
    """A time budget on ``time.perf_counter()``'s clock: started at ``t0``, ending at ``end`` (inf: none)."""

    t0: float
    end: float = math.inf

    @classmethod
    def start(cls, time_limit=None) -> Deadline:
        """A budget of ``time_limit`` seconds (validated; None: unlimited) starting now."""
        limit = check_time_limit(time_limit)
        now = time.perf_counter()
        return cls(now, math.inf if limit is None else now + limit)

    @property
    def limited(self) -> bool:
        return math.isfinite(self.end)

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit; negative once past)."""
        return self.end - time.perf_counter()

    def seconds_left(self) -> float | None:
        """:meth:`remaining`, or None without a limit (what solvers take as their limit)."""
        return self.remaining() if self.limited else None

    def expired(self, reserve: float = 0.0) -> bool:
        """Whether fewer than ``reserve`` seconds are left."""
        return self.remaining() <= reserve

    def within(self, seconds: float | None = None, *, share: float | None = None) -> Deadline:
        """A sub-budget starting now: at most ``seconds``, or ``share`` of what is left, never past this one."""
        now = time.perf_counter()
        end = self.end
        if seconds is not None:
            end = min(end, now + max(float(seconds), 0.0))
        if share is not None and self.limited:
            end = min(end, now + share * max(self.end - now, 0.0))
        return Deadline(now, end)

    def shortened(self, reserve: float) -> Deadline:
        """The same budget ending ``reserve`` seconds earlier (kept for judging a last result)."""
        return Deadline(self.t0, self.end - reserve)
