"""Attacks on one input: the exact MILP, PGD and IProp, all ending in an :class:`AttackResult`."""

from __future__ import annotations

import inspect

from ..errors import InvalidArgumentError
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..threads import single_threaded_blas
from ..validate import check_choice
from ..verify.engine import exact_attack
from .best import best_attack
from .combined import iprop_pgd_attack
from .iprop import iprop_attack
from .milp import TargetOutcome, milp_attack
from .pgd import pgd_attack
from .result import AttackResult, OnnxRecheck

METHODS = {
    "milp": milp_attack,
    "pgd": pgd_attack,
    "iprop": iprop_attack,
    "iprop+pgd": iprop_pgd_attack,
    "best": best_attack,
    "exact": exact_attack,
}


@reports_progress
def attack(net: BNN, x, eps, *, method: str = "best", target: int | None = None, time_limit: float = 60.0,
           backend: str = "highs", progress: Progress = NO_PROGRESS, **options) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with ``method`` (one of :data:`METHODS`).

    'milp' is the paper's exact MILP (it can prove robustness), 'pgd' the gradient baseline, 'iprop'
    integer target propagation, 'iprop+pgd' IProp warm-started by PGD, 'exact' the exact engine of
    :func:`bnnmip.verify` (enumeration, branch-and-bound, CP-SAT, MILP: decides far more instances),
    and 'best' (the default) PGD, IProp and then the exact engine for the rest of the budget.
    ``target=None`` attacks every other class (closest first) within the shared ``time_limit``
    (seconds).  ``backend`` picks the MILP solver ('highs', 'scip', 'cvxpy', 'cpsat') for the methods
    that solve MILPs.  ``progress=True`` shows a live line on stderr (incumbent, bound, elapsed) once
    the attack has run a moment; a callable gets a :class:`~bnnmip.progress.ProgressState` now and
    then; quiet by default.  Other keyword options go to the method (see each method's docstring).
    The result's ``radius`` says the radius searched (on a grid, the whole steps within ``eps``).
    """
    check_choice(method, METHODS, "method")
    accepted = inspect.signature(METHODS[method]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidArgumentError(f"{unknown[0]}=...: not an option of method {method!r} "
                                       f"(options: {sorted(set(accepted) - {'net', 'x', 'eps'})})")
    # The attacks multiply small batches; multi-threaded BLAS only adds latency to those.
    with single_threaded_blas():
        return METHODS[method](net, x, eps, target=target, time_limit=time_limit, backend=backend, progress=progress,
                               **options)


__all__ = ["METHODS", "AttackResult", "OnnxRecheck", "TargetOutcome", "attack", "best_attack", "iprop_attack",
           "iprop_pgd_attack", "milp_attack", "pgd_attack"]
