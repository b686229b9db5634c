"""'best', the recommended attack: PGD briefly, IProp, then the exact engine for the rest of the budget.

PGD's flips come in its first moments; IProp (from the clean input, so that with the same seed it
retraces IProp alone for its share) finds most of what it ever finds early; the exact engine
(:func:`bnnmip.verify`: interval bounds, the first-layer flip branch-and-bound, enumeration or CP-SAT
where they apply, then its own IProp+PGD search) either proves the input robust — a complete proof,
independent of the earlier stages — or finds the flips the local searches missed.
"""

from __future__ import annotations

from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..verify.engine import exact_attack
from .combined import chain
from .iprop import iprop_attack
from .pgd import pgd_attack
from .result import AttackResult

# PGD's and IProp's shares of the budget; the exact engine has the rest.
BEST_SHARES = (0.05, 0.5)


@reports_progress
def best_attack(net: BNN, x, eps, *, target: int | None = None, time_limit: float = 60.0, backend: str = "highs",
                levels: int | None = None, seed: int = 0, threads: int | None = None,
                progress: Progress = NO_PROGRESS) -> AttackResult:
    """The recommended default: PGD, then IProp, then :func:`bnnmip.verify` (which may also prove the
    input robust) for the rest of the budget.  Shares: :data:`BEST_SHARES`."""
    common = {"levels": levels, "seed": seed}
    pgd_share, iprop_share = BEST_SHARES
    stages = [
        (pgd_share, pgd_attack, common, False),
        (iprop_share, iprop_attack, {**common, "threads": threads}, False),
        (None, exact_attack, {**common, "threads": threads}, False),
    ]
    return chain(net, x, eps, stages, method="best", target=target, time_limit=time_limit, backend=backend,
                 progress=progress)
