r"""The exact engine: a portfolio of complete routes chosen per instance, one verdict.

``method='auto'`` runs, within one time budget:

1. **interval bounds** — if no target's margin can reach zero, the box is robust;
2. with input binarization and at most :data:`ENUM_BITS` free bits, **enumeration** of every bit
   pattern (milliseconds; it decides);
3. a short **PGD** run — a quick flip, re-checked, ends the search;
4. **branch-and-bound** (:data:`_BAB_SHARE` of what is left) over the input bits
   (:mod:`.branch`), or over the first layer's flips pruned by pairwise conflicts (:mod:`.flips`);
5. with the rest: input binarization, **CP-SAT** on the decision model; a real-valued first layer,
   a search for a flip (IProp warm-started by PGD): where branch-and-bound cannot finish, CP-SAT
   and the MILP measured no better on the zoo's real-input networks.

Any single route can be asked for (``method='enumerate' | 'bab' | 'cpsat' | 'milp'``); a route that
cannot apply to the instance says why in the result's message and returns 'unknown'.
"""

from __future__ import annotations

from ..attacks.combined import iprop_pgd_attack
from ..attacks.milp import milp_attack
from ..attacks.pgd import pgd_attack
from ..attacks.result import AttackResult
from ..milp.backend import backend_names, get_backend
from ..network import BNN
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..status import Verdict
from ..timing import Deadline
from ..validate import check_choice, check_threads
from .branch import branch_bits
from .decision import decide_with_model
from .enumerate import enumerate_bits, enumerate_first_layer
from .flips import branch_flips
from .problem import Instance

ENUM_BITS = 16  # enumerate at most 2**16 input-bit patterns (well under a second); more: branch-and-bound
MAX_CHECKS = 256  # reachability checks of first-layer patterns before enumeration gives up
ROUTES = ("auto", "enumerate", "bab", "cpsat", "milp")
_PGD_SHARE, _PGD_SECONDS = 0.03, 0.5
_BAB_SHARE = 0.85


@reports_progress
def verify(net: BNN, x, eps, *, time_limit: float | None = 60.0, levels: int | None = None, method: str = "auto",
           backend: str = "highs", threads: int | None = None, target: int | None = None,
           seed: int = 0, progress: Progress = NO_PROGRESS) -> AttackResult:
    """Decide whether some input within L∞ radius ``eps`` of ``x`` changes the prediction.

    Returns an :class:`~bnnmip.AttackResult` (method 'exact') whose status is 'robust' only with a
    complete proof (``proof`` says which: interval bounds, enumeration, branch-and-bound, CP-SAT,
    MILP), 'adversarial' with an input re-checked by onnxruntime (``check``), or 'unknown' when the
    budget ran out.  ``details`` holds per-phase times and counters (patterns, nodes, solves).
    ``progress`` (True, a callable or a :class:`~bnnmip.progress.Progress`) hears each phase and
    the best objective; quiet by default.  ``method`` picks one route instead of the portfolio (see
    the module docstring); ``backend`` is the MILP solver of the 'milp' route ('highs', 'scip');
    ``levels`` the input grid (default: the network's).  With ``target``, only that class counts.
    """
    check_choice(method, ROUTES, "method")
    check_choice(backend, backend_names(), "backend")  # even when the route chosen solves no MILP: no typos
    threads = check_threads(threads)
    deadline = Deadline.start(time_limit)
    inst = Instance.make(net, x, eps, levels=levels, target=target, deadline=deadline, progress=progress)
    run = _Run(inst, backend, threads, seed)
    verdict, proof, message = run.route(method)
    robust = verdict == "robust" and not inst.decided
    details = {"route": method, **inst.stats.as_dict()}
    return inst.tracker.result("exact", run.solver_name, robust=robust, message=message, details=details,
                               proof=proof if robust else "")


class _Run:
    """One engine run: the routes, each recording its phase in the instance's statistics."""

    def __init__(self, inst: Instance, backend: str, threads: int | None, seed: int):
        self.inst, self.backend, self.threads, self.seed = inst, backend, threads, seed
        self.solver_name: str | None = None

    # ------------------------------------------------------------------ dispatch
    def route(self, method: str) -> tuple[str, str | None, str]:
        """(verdict, proof kind, message)."""
        self.method = method
        verdict = self._phase("interval", self._interval)
        if verdict == "robust":
            return verdict, "interval bounds: no target's margin reaches 0", ""
        if method == "auto":
            return self._auto()
        why = self._not_applicable(method)
        if why:
            return "unknown", None, f"method={method!r} does not apply: {why}"
        return self._single(method)

    def _single(self, method: str) -> tuple[str, str | None, str]:
        verdict = self._phase(method, getattr(self, "_" + method))
        if verdict == "too_many":
            return "unknown", None, (f"more than {MAX_CHECKS} first-layer patterns would change the prediction: "
                                     "too many to check one by one (method='bab' prunes them)")
        return verdict, self._proof(method) if verdict == "robust" else None, (
            "undecided within the time limit" if verdict == "unknown" else "")

    def _auto(self) -> tuple[str, str | None, str]:
        plan = self._plan()
        # Enumeration of a few patterns decides in milliseconds: before any heuristic.
        steps = plan[:1] + ["pgd"] + plan[1:] if plan[0] == "enumerate" else ["pgd"] + plan
        for method in steps:
            verdict = self._phase(method, getattr(self, "_" + method))
            if verdict in ("robust", "adversarial"):
                return verdict, self._proof(method) if verdict == "robust" else None, ""
            if self.inst.deadline.expired(0.05):
                break
        return "unknown", None, "undecided within the time limit"

    def _plan(self) -> list[str]:
        """The routes for this instance, most effective first (see the module docstring)."""
        if self.inst.net.input_binarization is not None:
            return ["enumerate"] if self._free_count() <= ENUM_BITS else ["bab", "cpsat"]
        # Where branch-and-bound cannot finish, CP-SAT and the MILP measured no better on the zoo's
        # real-input networks: the rest of the budget goes to finding a flip (IProp from PGD's best).
        return ["bab", "search"]

    def _phase(self, name: str, fn) -> str:
        inst = self.inst
        inst.tracker.progress.update(stage=f"verify: {name}")
        t = inst.deadline.elapsed()
        verdict = "adversarial" if inst.decided else fn()
        if inst.decided:
            verdict = "adversarial"
        inst.stats.phases.append((name, round(inst.deadline.elapsed() - t, 4), verdict))
        return verdict

    # ------------------------------------------------------------------ applicability
    def _free_count(self) -> int:
        return self.inst.bounds[0].n_free

    def _integral(self) -> bool:
        net, box = self.inst.net, self.inst.box
        if net.input_binarization is not None:
            return True
        return box.on_grid and net.layers[0].binary_weights

    def _not_applicable(self, method: str) -> str:
        ib = self.inst.net.input_binarization is not None
        if method == "enumerate" and self._free_count() > ENUM_BITS:
            kind = "input bits" if ib else "first-layer units"
            return f"{self._free_count()} free {kind}, more than the {ENUM_BITS} enumeration takes"
        if method == "cpsat" and not self._integral():
            return ("CP-SAT needs an integer model: inputs on a grid (give levels) and ±1 first-layer weights, "
                    "or input binarization")
        return ""

    def _proof(self, method: str) -> str:
        stats = self.inst.stats
        kind = "input-bit" if self.inst.net.input_binarization is not None else "first-layer"
        return {
            "enumerate": f"enumeration of all {stats.patterns:,} {kind} patterns ({stats.checks} reachability checks)",
            "bab": f"branch-and-bound over {'input bits' if kind == 'input-bit' else 'first-layer flips'}, "
                   f"{stats.nodes:,} nodes ({stats.checks} reachability checks)",
            "cpsat": "CP-SAT: the decision model is infeasible",
            "milp": f"MILP ({self.backend}): every target's dual bound < 0",
        }[method]

    # ------------------------------------------------------------------ routes
    def _interval(self) -> str:
        return "robust" if self.inst.margin_upper(self.inst.bounds[-1]).max() < 0 else "unknown"

    def _pgd(self) -> str:
        inst = self.inst
        seconds = min(_PGD_SECONDS, _PGD_SHARE * inst.deadline.remaining())
        if seconds <= 0.01:
            return "unknown"
        result = pgd_attack(inst.net, inst.x, inst.eps, target=inst.tracker.target, time_limit=seconds,
                            backend=None, levels=inst.levels, seed=self.seed)
        return self._adopt(result)

    def _enumerate(self) -> str:
        if self.inst.net.input_binarization is not None:
            return enumerate_bits(self.inst)
        return enumerate_first_layer(self.inst, MAX_CHECKS, _milp_backend(self.backend))

    def _bab(self) -> str:
        inst = self.inst
        # In the portfolio, CP-SAT / the MILP keep a share of the budget for what branch-and-bound leaves open.
        deadline = inst.deadline.within(share=_BAB_SHARE if self.method == "auto" else 1.0)
        if inst.net.input_binarization is not None:
            return branch_bits(inst, deadline=deadline)
        return branch_flips(inst, _milp_backend(self.backend), deadline=deadline)

    def _search(self) -> str:
        inst = self.inst
        seconds = inst.deadline.remaining()
        if seconds <= 0.05:
            return "unknown"
        result = iprop_pgd_attack(inst.net, inst.x, inst.eps, target=inst.tracker.target, time_limit=seconds,
                                  backend=_milp_backend(self.backend), levels=inst.levels, seed=self.seed)
        return self._adopt(result)

    def _cpsat(self) -> str:
        self.solver_name = "cpsat"
        return decide_with_model(self.inst, "cpsat", self.threads)

    def _milp(self) -> str:
        inst = self.inst
        self.solver_name = _milp_backend(self.backend)
        warm = get_backend(self.solver_name).capabilities.warm_start
        result = milp_attack(inst.net, inst.x, inst.eps, target=inst.tracker.target,
                             time_limit=max(inst.deadline.remaining(), 0.05), backend=self.solver_name,
                             levels=inst.levels, threads=self.threads, start=inst.tracker.x_best if warm else None)
        return self._adopt(result)

    def _adopt(self, result: AttackResult) -> str:
        """Take another attack's verdict: its (re-checked) flip, or its proof."""
        if result.status == Verdict.ADVERSARIAL and result.x_adv is not None:
            self.inst.offer(result.x_adv)
            return "adversarial" if self.inst.decided else "unknown"
        if result.x_best is not None:
            self.inst.tracker.offer(result.x_best)
        return "robust" if result.status == Verdict.ROBUST else "unknown"


def _milp_backend(backend: str) -> str:
    """The MILP solver for the routes that need one (CP-SAT takes no LP: HiGHS then)."""
    return "highs" if backend == "cpsat" else backend


def exact_attack(net: BNN, x, eps, *, target: int | None = None, time_limit: float = 60.0, backend: str = "highs",
                 levels: int | None = None, threads: int | None = None, route: str = "auto",
                 seed: int = 0, progress: Progress = NO_PROGRESS) -> AttackResult:
    """``attack(method='exact')``: :func:`verify` with the attack's signature (``route`` picks one route)."""
    return verify(net, x, eps, time_limit=time_limit, levels=levels, method=route, backend=backend, threads=threads,
                  target=target, seed=seed, progress=progress)


__all__ = ["ENUM_BITS", "ROUTES", "exact_attack", "verify"]
