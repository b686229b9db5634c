"""Attacks on one input: the exact MILP, PGD and IProp, all ending in an :class:`AttackResult`."""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..network import BNN
from .iprop import iprop_attack
from .milp import milp_attack
from .pgd import pgd_attack
from .result import AttackResult

METHODS = {"milp": milp_attack, "pgd": pgd_attack, "iprop": iprop_attack}


def attack(net: BNN, x, eps, *, method: str = "milp", target: int | None = None, time_limit: float = 60.0,
           backend: str = "highs", **options) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with ``method`` (one of :data:`METHODS`).

    ``target=None`` attacks every other class (closest first) within the shared ``time_limit``
    (seconds).  ``backend`` picks the MILP solver ('highs', 'scip', 'cvxpy') for the methods that
    solve MILPs.  Other keyword options go to the method (see each method's docstring).
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"method={method!r}: expected one of {sorted(METHODS)}")
    return METHODS[method](net, x, eps, target=target, time_limit=time_limit, backend=backend, **options)


__all__ = ["METHODS", "AttackResult", "attack", "milp_attack", "pgd_attack"]
