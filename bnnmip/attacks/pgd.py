r"""PGD on a hardtanh surrogate of the BNN: the gradient baseline, judged by the exact network.

**Surrogate.** Every sign unit of ``net.threshold_stages`` becomes a hardtanh of its batch-norm
normalised pre-activation, as in straight-through training of BNNs:

.. math::
    u_0 = \mathrm{clip}\big(s_0 \odot (d \odot x - \theta_0), -1, 1\big)\ \text{(input binarization, if any)},
    \qquad u_l = \mathrm{clip}\big(s_l \odot (W_l u_{l-1} - c_l), -1, 1\big),
    \qquad z = A u_D + c,

with :math:`u_0 = x` when there is no input binarization, and :math:`s \ge 0` the BN scale
(``Layer.scale``; a negative :math:`\gamma` is already folded into a negated row).  The centre
:math:`c_l` is the threshold :math:`\theta_l` on a real-valued layer and :math:`\theta_l - 1` on an
integer (±1-input) layer: there the exact pre-activation is either :math:`\ge \theta_l` (+1) or
:math:`\le \theta_l - 2` (-1), so the centre between them makes the surrogate agree in sign with the
BNN whenever its inputs are exactly ±1.  A *flat* unit (scale 0 or an infinite threshold: a constant
neuron) keeps its exact step :math:`[a_j \ge \theta_j]` with derivative 0, i.e. its exact constant
value rather than the uninformative hardtanh(0) = 0.

**Loss.** For a row with target set :math:`T` and label :math:`c` (the clean prediction):
:math:`f = \max_{t \in T} z_t - z_c` (the margin; subgradient at the arg max).  The attack gives
every row a *single* target: untargeted, the rows cycle through the other classes closest first
(by clean logit gap).  On trained MNIST BNNs (2x100, 3x100, ε = 0.03 and 0.05) that flipped as
many or more images than the max-margin over all targets (or cross-entropy), which keeps
chasing whichever class the *surrogate* ranks first, often not one the BNN can be pushed to.
The gradient :math:`\nabla_x f` is written by hand, with
:math:`\partial u / \partial a = s\,[\,|s(a-c)| < 1\,]`.

**Steps** (L∞ PGD): :math:`x \leftarrow \Pi\big(x + \alpha_i\,\mathrm{sign}(\nabla_x f)\big)`, with
:math:`\Pi` the projection onto the box :math:`[\max(x^0-\varepsilon, lo), \min(x^0+\varepsilon, hi)]`
and then onto its grid (nearest grid step) when inputs are quantized; :math:`\alpha_i` decays on a
cosine from :math:`\varepsilon/4` to :math:`\varepsilon/40`, never below one grid step (a smaller
step would round back to where it started).  Restarts start uniformly at random in the box (the
very first from :math:`x^0`) and run as the rows of one batch.  A row whose surrogate gradient
vanishes (every unit on its path saturated) takes a random sign step instead: the surrogate is
often misleading anyway (Khalil et al. 2019, Fig. 1), and the BNN is piecewise constant.

**Judging.** Every iterate batch goes through the *exact* BNN and the :class:`Tracker`, which keeps
the best exact objective and the anytime trace, and stops the attack at the first flip that
onnxruntime confirms.  PGD never claims 'robust'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..box import InputBox, check_input, input_box
from ..errors import InvalidArgumentError
from ..milp.backend import backend_names
from ..network import BNN, InputBinarization, Layer
from ..progress import NO_PROGRESS, Progress, reports_progress
from ..timing import Deadline
from ..validate import check_choice, check_eps, check_positive_int, check_seed
from .result import AttackResult
from .tracker import Tracker

_FINAL_STEP_FRACTION = 0.1  # the schedule ends at a tenth of its first step
MAX_BATCH_VALUES = 2**24  # starts x inputs stepped together (a few float64 arrays of this size)


# ---------------------------------------------------------------------- surrogate network
@dataclass(frozen=True, eq=False)
class SurrogateStage:
    r"""One hardtanh stage :math:`u = \mathrm{clip}(s (a - c), -1, 1)` with ``a = inp @ weight``
    (``inp * direction`` for the input binarization); ``flat`` units keep their exact step."""

    weight: np.ndarray | None  # (n_in, m), or None for the elementwise input binarization
    direction: np.ndarray | None  # (n,) ±1, input binarization only
    threshold: np.ndarray  # (m,) θ, for the flat units' exact step
    centre: np.ndarray  # (m,) θ on real layers, θ - 1 on integer layers; 0 on flat units
    scale: np.ndarray  # (m,) s >= 0; 0 on flat units
    flat: np.ndarray  # (m,) bool

    @classmethod
    def of(cls, stage: Layer | InputBinarization) -> SurrogateStage:
        theta = np.asarray(stage.threshold, np.float64)
        flat = (stage.scale <= 0) | ~np.isfinite(theta)
        offset = 1.0 if isinstance(stage, Layer) and stage.integer else 0.0
        centre = np.where(flat, 0.0, theta - offset)
        scale = np.where(flat, 0.0, stage.scale).astype(np.float64)
        if isinstance(stage, Layer):
            return cls(np.ascontiguousarray(stage.weight.T, np.float64), None, theta, centre, scale, flat)
        return cls(None, stage.direction.astype(np.float64), theta, centre, scale, flat)

    def forward(self, inp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, du/da) for a batch ``inp`` (B, n_in)."""
        a = inp * self.direction if self.weight is None else inp @ self.weight
        z = self.scale * (a - self.centre)
        u = np.where(self.flat, np.where(a >= self.threshold, 1.0, -1.0), np.clip(z, -1.0, 1.0))
        return u, np.where(np.abs(z) < 1.0, self.scale, 0.0)

    def backward(self, grad_u: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """The gradient with respect to the stage's input, from the one with respect to ``u``."""
        grad_a = grad_u * slope
        return grad_a * self.direction if self.weight is None else grad_a @ self.weight.T


@dataclass(frozen=True, eq=False)
class Surrogate:
    """The hardtanh surrogate of a BNN (see the module docstring), float64, batched."""

    stages: tuple[SurrogateStage, ...]
    out_weight: np.ndarray  # (k, m)
    out_bias: np.ndarray  # (k,)

    @classmethod
    def of(cls, net: BNN) -> Surrogate:
        stages = tuple(SurrogateStage.of(stage) for stage in net.threshold_stages)
        return cls(stages, net.out_weight.astype(np.float64), net.out_bias.astype(np.float64))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Surrogate logits (B, k) of a batch (B, n)."""
        return self._forward(X)[0]

    def value_and_grad(self, X: np.ndarray, label: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Margins ``max_{t in mask[b]} z_t - z_label`` (B,) and their input gradients (B, n)."""
        logits, slopes = self._forward(X)
        rows = np.arange(len(X))
        best = np.argmax(np.where(mask, logits, -np.inf), axis=1)
        grad_z = np.zeros_like(logits)
        grad_z[rows, best] = 1.0
        grad_z[:, label] -= 1.0
        grad = grad_z @ self.out_weight
        for stage, slope in zip(reversed(self.stages), reversed(slopes), strict=True):
            grad = stage.backward(grad, slope)
        return logits[rows, best] - logits[:, label], grad

    def _forward(self, X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        u, slopes = X, []
        for stage in self.stages:
            u, slope = stage.forward(u)
            slopes.append(slope)
        return u @ self.out_weight.T + self.out_bias, slopes


def surrogate_logits(net: BNN, X) -> np.ndarray:
    """Logits (B, k) of the hardtanh surrogate of ``net`` for a batch of inputs."""
    return Surrogate.of(net).logits(net.as_batch(X))


def surrogate_value_and_grad(net: BNN, X, label: int, targets) -> tuple[np.ndarray, np.ndarray]:
    r"""The surrogate margin of a batch and its gradient with respect to the input.

    Parameters
    ----------
    net
        The network; its surrogate is described in the module docstring.
    X
        Inputs (B, n), or one input.
    label
        The class whose logit is subtracted (the clean prediction).
    targets
        A class, a list of classes shared by every row, or a boolean mask (B, k) giving each row
        its own set; the margin is :math:`\max_{t} z_t - z_{label}` over the set.

    Returns
    -------
    values, grads
        Arrays (B,) and (B, n).
    """
    X = net.as_batch(X)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < net.n_classes:
        raise InvalidArgumentError(f"label={label!r}: expected a class in 0..{net.n_classes - 1}")
    mask = _target_mask(targets, len(X), net.n_classes)
    return Surrogate.of(net).value_and_grad(X, int(label), mask)


def _target_mask(targets, n_rows: int, n_classes: int) -> np.ndarray:
    """A (B, k) boolean mask from a class, a list of classes or a mask."""
    arr = np.asarray(targets)
    if arr.dtype == bool:
        if arr.shape not in ((n_classes,), (n_rows, n_classes)) or not arr.any(axis=-1).all():
            raise InvalidArgumentError(
                f"targets: expected a mask ({n_rows}, {n_classes}) with a class in every row, got {arr.shape}"
            )
        return np.broadcast_to(arr, (n_rows, n_classes))
    classes = arr.reshape(-1)
    if classes.size == 0 or classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= n_classes:
        raise InvalidArgumentError(f"targets={targets!r}: expected class indices in 0..{n_classes - 1}")
    mask = np.zeros((n_rows, n_classes), bool)
    mask[:, classes] = True
    return mask


# ---------------------------------------------------------------------- the attack
@dataclass(frozen=True)
class PgdOptions:
    """The validated budget and schedule of one PGD run."""

    restarts: int
    steps: int
    batch: int
    step_size: float
    min_step: float  # one grid step on a grid, else 0


@reports_progress
def pgd_attack(
    net: BNN,
    x,
    eps,
    *,
    target: int | None = None,
    time_limit: float | None = 60.0,
    backend: str | None = "highs",
    levels: int | None = None,
    restarts: int | None = None,
    steps: int = 100,
    step_size: float | None = None,
    seed: int | None = 0,
    batch: int = 32,
    progress: Progress = NO_PROGRESS,
) -> AttackResult:
    """Attack ``x`` at L∞ radius ``eps`` with PGD on the hardtanh surrogate (see the module docstring).

    Parameters
    ----------
    net, x, eps
        The network, the clean input and the L∞ radius.
    target
        The class to reach, or None for any other class (rows cycle through the targets,
        closest first).
    time_limit
        Seconds (None: the step budget alone); the clock is checked at every iteration.
    backend
        Ignored (PGD solves no MILP); accepted so that every method has the same signature.
    levels
        The input grid (default: the network's own); iterates are rounded onto it.
    restarts, steps, batch
        Starts in all (default: new starts until the time limit, or 256 without one), PGD steps
        per start, and how many starts run together as one batch.
    step_size
        The first step α₀ (default ε/4); a cosine decays it to α₀/10, never below one grid step.
    seed
        Seeds the random starts and fallback steps: runs that the time limit does not cut are
        reproducible.
    progress
        True (a line on stderr), a callable or a :class:`~bnnmip.progress.Progress` to hear the
        best objective as it improves; quiet by default.

    Returns
    -------
    AttackResult
        'adversarial' with a verified ``x_adv`` (stops at the first), else 'unknown'; never 'robust'.
    """
    deadline = Deadline.start(time_limit)
    if backend is not None:  # unused, but no typos
        check_choice(backend, backend_names(), "backend")
    xf, eps = check_input(net, x), check_eps(eps)
    box = input_box(net, xf, eps, levels)
    if restarts is None:  # the paper gives every method the same time: restart until it is up
        restarts = 2**62 if deadline.limited else 256
    opts = _check_options(box, eps, restarts, steps, batch, step_size)
    rng = np.random.default_rng(check_seed(seed))
    progress.update(stage="PGD")
    tracker = Tracker(net, xf, eps, box, target, t0=deadline.t0, progress=progress)
    run = _Run(Surrogate.of(net), tracker, box, opts, rng, deadline.end)
    stop = run.all_restarts()
    message = {"flip": "", "time": "time limit reached", "budget": "step budget exhausted"}[stop]
    details = {"iterations": run.iterations, "restarts": run.restarts_started, "random_steps": run.random_steps,
               "steps": opts.steps, "batch": opts.batch, "step_size": opts.step_size, "stopped_by": stop}
    return tracker.result("pgd", None, message=message, details=details)


@dataclass
class _Run:
    """One PGD run: batches of restarts, stepped until a flip, the deadline or the end of the budget."""

    surrogate: Surrogate
    tracker: Tracker
    box: InputBox
    opts: PgdOptions
    rng: np.random.Generator
    deadline: float
    iterations: int = 0
    restarts_started: int = 0
    random_steps: int = 0

    def all_restarts(self) -> str:
        """Run the batches of restarts; why it stopped: 'flip', 'time' or 'budget'."""
        while self.restarts_started < self.opts.restarts:
            if time.perf_counter() >= self.deadline:
                return "time"
            rows = int(min(self.opts.batch, self.opts.restarts - self.restarts_started))
            X, mask = self._starts(rows), self._masks(rows)
            self.restarts_started += rows
            stop = self._ascend(X, mask)
            if stop:
                return stop
        return "budget"

    def _ascend(self, X: np.ndarray, mask: np.ndarray) -> str | None:
        """PGD from the starts ``X``: 'flip' or 'time' when it stops early, else None."""
        if self.tracker.offer_batch(X):
            return "flip"
        for alpha in _schedule(self.opts):
            if time.perf_counter() >= self.deadline:
                return "time"
            _, grad = self.surrogate.value_and_grad(X, self.tracker.label, mask)
            X = self.box.snap(X + alpha * self._directions(grad))
            self.iterations += 1
            if self.tracker.offer_batch(X):
                return "flip"
        return None

    def _directions(self, grad: np.ndarray) -> np.ndarray:
        """sign(grad), with a random ±1 direction for the rows whose gradient vanished."""
        direction = np.sign(grad)
        dead = ~direction.any(axis=1)
        n_dead = int(dead.sum())
        if n_dead:
            self.random_steps += n_dead
            direction[dead] = self.rng.choice((-1.0, 1.0), size=(n_dead, grad.shape[1]))
        return direction

    def _starts(self, rows: int) -> np.ndarray:
        """Uniform random points of the box (grid points on a grid); the very first start is x."""
        X = self.box.random(self.rng, rows)
        if self.restarts_started == 0:
            X[0] = self.box.snap(self.tracker.x)
        return X

    def _masks(self, rows: int) -> np.ndarray:
        """One target per row, cycling through ``tracker.targets`` (closest first) across batches."""
        targets = np.asarray(self.tracker.targets)
        mask = np.zeros((rows, self.tracker.net.n_classes), bool)
        mask[np.arange(rows), targets[(self.restarts_started + np.arange(rows)) % len(targets)]] = True
        return mask


def _schedule(opts: PgdOptions) -> Iterator[float]:
    """Step sizes, one per step as it is taken: a cosine from ``step_size`` down to a tenth of it,
    floored at ``min_step`` (never an array of ``steps`` values: the budget may be huge)."""
    last = max(opts.steps - 1, 1)
    for i in range(opts.steps):
        cosine = 0.5 * (1 + math.cos(math.pi * i / last))
        yield max(opts.step_size * (_FINAL_STEP_FRACTION + (1 - _FINAL_STEP_FRACTION) * cosine), opts.min_step)


def _check_options(box: InputBox, eps: float, restarts, steps, batch, step_size) -> PgdOptions:
    for name, value in (("restarts", restarts), ("steps", steps), ("batch", batch)):
        check_positive_int(value, name)
    batch = min(batch, restarts)
    if batch * len(box.lower) > MAX_BATCH_VALUES:
        raise InvalidArgumentError(f"batch={batch!r}: {batch:,} starts x {len(box.lower):,} inputs is over bnnmip's "
                                   f"limit of {MAX_BATCH_VALUES:,} values in one batch")
    is_number = isinstance(step_size, (int, float, np.integer, np.floating)) and not isinstance(step_size, bool)
    if step_size is None:
        step_size = eps / 4
    elif not is_number or not np.isfinite(step_size) or step_size <= 0:
        raise InvalidArgumentError(f"step_size={step_size!r}: expected a positive number or None")
    min_step = 0.0 if box.step is None else box.step
    return PgdOptions(int(restarts), int(steps), int(batch), float(step_size), min_step)
