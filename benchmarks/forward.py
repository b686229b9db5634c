#!/usr/bin/env python3
"""Forward speed: bnnmip's ``BNN.logits`` against single-threaded onnxruntime, side by side, at the
batch sizes attacks use (1, 16, 256 rows) and at 10,000 rows, on every model of the zoo.

onnxruntime runs the original ONNX file with ``intra_op_num_threads = inter_op_num_threads = 1``
and its default graph optimizations, CPUExecutionProvider.  Inputs are the model's shipped test
slice (Fashion-MNIST or MNIST) tiled to the batch size, float32, shape (n, 1, 28, 28).  For every
model and size, the two engines are timed alternately (the order flips at every repetition, after
warm-up) and each sample is the mean of a few back-to-back calls, as an attack makes them (``--calls``:
more for small batches).  The ratio is onnxruntime's time over bnnmip's for the two adjacent samples
of one repetition (> 1: bnnmip is faster); the table gives its median and quartiles over the
repetitions, and the median times.  bnnmip runs single-threaded below 2,048 rows; from 2,048 rows
on it splits the batch over its thread pool (``$BNNMIP_THREADS``, default: every CPU it may use).

The second table is the floor under the first: the first layer's float32 product alone, in numpy
(OpenBLAS, as bnnmip computes it, one thread) and as a one-node ONNX MatMul in single-threaded
onnxruntime (MLAS, weights packed once), interleaved the same way.

The third table documents the choice of the float32 product for the ±1 hidden layers: the same
hidden-layer products (from the real first-layer outputs of the same batch) computed as a float32
matrix product and as bit-packed XNOR-popcount (``np.bitwise_count`` on uint64 words, packing
included), both on one thread, checked to agree exactly, at each batch size.

    python benchmarks/forward.py                       # all 16 models, 1 / 16 / 256 / 10,000 rows
    python benchmarks/forward.py --quick               # a smoke run: two models, 1 / 16 / 600 rows
    python benchmarks/forward.py --json out.json       # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import bnnmip
from bnnmip.io.datasets import load_npz
from bnnmip.kernel import describe
from bnnmip.threads import n_threads, single_threaded_blas

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ARCHS = ("2x100", "2x200", "2x300", "2x400", "2x500", "3x100", "4x100", "5x100")
DATASETS = {"fmnist": "fmnist_test100.npz", "mnist": "mnist_test1000.npz"}
SIZES = (1, 16, 256, 10_000)


def batch(dataset: str, n: int) -> np.ndarray:
    """The dataset's shipped test images tiled to ``n`` rows, float32 in [0, 1], shape (n, 1, 28, 28)."""
    images = load_npz(MODELS / DATASETS[dataset]).images
    tiled = np.tile(images, (-(-n // len(images)), 1))[:n]
    return (tiled.astype(np.float32) / np.float32(255)).reshape(n, 1, 28, 28)


def single_threaded_session(source: Path | bytes) -> ort.InferenceSession:
    """onnxruntime on one thread (intra- and inter-op), default graph optimizations, on a file or model bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                providers=["CPUExecutionProvider"])


def calls_per_sample(n: int) -> int:
    """Back-to-back calls per timed sample: about a millisecond's worth for small batches."""
    return 50 if n == 1 else 10 if n <= 16 else 3 if n <= 256 else 1


def timed(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def paired(ours, theirs, reps: int, pause: float, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-call times of ``ours`` and ``theirs``, one sample each per repetition, the order flipping every time."""
    times: tuple[list, list] = ([], [])
    for rep in range(reps):
        for k in (0, 1) if rep % 2 == 0 else (1, 0):
            if pause:
                time.sleep(pause)
            times[k].append(timed((ours, theirs)[k], calls))
    return np.array(times[0]), np.array(times[1])


def forward_row(model: str, n: int, reps: int, pause: float) -> dict:
    """Paired, interleaved timings of bnnmip and single-threaded onnxruntime on ``n`` rows of ``model``."""
    path = MODELS / f"{model}.onnx"
    net = bnnmip.load_onnx(path)
    session = single_threaded_session(path)
    name = session.get_inputs()[0].name
    X = batch(model.split("_")[0], n)
    ours = net.logits(X)  # warm-up (caches, thread pool, buffers)
    (theirs,) = session.run(None, {name: X})
    agree = int(np.sum(np.argmax(ours, 1) == np.argmax(theirs, 1)))
    calls = calls_per_sample(n)
    t_bnnmip, t_ort = paired(lambda: net.logits(X), lambda: session.run(None, {name: X}), reps, pause, calls)
    ratio = t_ort / t_bnnmip
    return {"model": model, "n": n, "bnnmip_s": float(np.median(t_bnnmip)), "ort_s": float(np.median(t_ort)),
            "ratio": float(np.median(ratio)), "ratio_q1": float(np.percentile(ratio, 25)),
            "ratio_q3": float(np.percentile(ratio, 75)), "agree": agree, "calls": calls}


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 1e-2 else f"{seconds * 1e3:,.1f} ms"


# ---------------------------------------------------------------------- the first layer's product alone
def product_row(width: int, n: int, reps: int, pause: float) -> dict:
    """The float32 product (n, 784) @ (784, width) of ±1 weights: numpy/OpenBLAS vs onnxruntime/MLAS."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    W = np.where(rng.random((784, width)) < 0.5, np.float32(-1), np.float32(1))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "product",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
                              [numpy_helper.from_array(W, "W")])
    session = single_threaded_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                      .SerializeToString())
    X = batch("fmnist", n).reshape(n, 784)
    out = np.empty((n, width), np.float32)
    with single_threaded_blas():
        t_numpy, t_ort = paired(lambda: np.dot(X, W, out=out), lambda: session.run(None, {"x": X}), reps, pause,
                                calls_per_sample(n))
    return {"width": width, "n": n, "numpy_s": float(np.median(t_numpy)), "ort_s": float(np.median(t_ort)),
            "ratio": float(np.median(t_ort / t_numpy))}


# ---------------------------------------------------------------------- XNOR-popcount alternative
def pack_signs(S: np.ndarray) -> np.ndarray:
    """Rows of ±1 as uint64 words, bit set for +1 (padding bits 0)."""
    bits = np.packbits(S > 0, axis=1, bitorder="little")
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


def popcount_product(H: np.ndarray, W_bits: np.ndarray, fan_in: int, rows: int = 256) -> np.ndarray:
    r"""``H @ W.T`` for ±1 ``H`` and ±1 ``W`` by XNOR-popcount: :math:`a = r - 2\,\mathrm{popcount}(h \oplus w)`.

    ``H`` is packed here (its cost is part of the method); ``W_bits`` is packed once.  For each
    block of rows and each 64-bit word: XOR against every unit's word, ``np.bitwise_count``, add
    into an int16 count; all into reused buffers.  (One (rows, units, words) XOR with a sum over
    the short word axis instead is several times slower.)
    """
    H_bits = pack_signs(H)
    W_words = np.ascontiguousarray(W_bits.T)  # (words, units)
    m = len(W_bits)
    out = np.empty((len(H), m), np.int16)
    xor, count = np.empty((rows, m), np.uint64), np.empty((rows, m), np.uint8)
    for s in range(0, len(H), rows):
        h = H_bits[s : s + rows]
        x, c, acc = xor[: len(h)], count[: len(h)], out[s : s + rows]
        acc[...] = 0
        for k in range(H_bits.shape[1]):
            np.bitwise_xor(h[:, k, None], W_words[k], out=x)
            np.add(acc, np.bitwise_count(x, out=c), out=acc)
        acc *= -2
        acc += fan_in
    return out


def popcount_row(arch: str, X: np.ndarray, reps: int) -> dict:
    """Times of the ±1 hidden layers' products on the batch ``X``: float32 BLAS vs XNOR-popcount, one thread each."""
    X = X.reshape(len(X), -1)
    net = bnnmip.load_onnx(MODELS / f"fmnist_{arch}.onnx")
    acts = net.forward(X).post  # the exact ±1 inputs of every hidden layer
    layers = [(layer, acts[i].astype(np.float32)) for i, layer in enumerate(net.layers[1:])]
    weights = [(np.ascontiguousarray(layer.weight.T, np.float32), pack_signs(layer.weight), layer.fan_in)
               for layer, _ in layers]
    t_f32, t_pop = [], []
    with single_threaded_blas():
        for (_, H), (W32, W_bits, fan_in) in zip(layers, weights, strict=True):
            if not np.array_equal(popcount_product(H, W_bits, fan_in), (H @ W32).astype(np.int32)):
                raise AssertionError(f"{arch}: popcount and float32 products differ")
        for _ in range(reps):
            f32 = pop = 0.0
            for (_, H), (W32, W_bits, fan_in) in zip(layers, weights, strict=True):
                t0 = time.perf_counter()
                np.matmul(H, W32)
                t1 = time.perf_counter()
                popcount_product(H, W_bits, fan_in)
                f32, pop = f32 + t1 - t0, pop + time.perf_counter() - t1
            t_f32.append(f32)
            t_pop.append(pop)
    tf, tp = float(np.median(t_f32)), float(np.median(t_pop))
    return {"arch": arch, "n": len(X), "hidden_layers": len(layers), "float32_s": tf, "popcount_s": tp,
            "slowdown": tp / tf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="batch sizes (default 1,16,256,10000)")
    parser.add_argument("--reps", type=int, default=15, help="paired repetitions per model and size (default 15)")
    parser.add_argument("--pause", type=float, default=0.02,
                        help="seconds of rest before each timed sample (default 0.02)")
    parser.add_argument("--models", default=",".join(f"{d}_{a}" for d in DATASETS for a in ARCHS),
                        help="comma-separated models of the zoo (default: all 16)")
    parser.add_argument("--quick", action="store_true", help="smoke run: two models, 1 / 16 / 600 rows, 3 reps")
    parser.add_argument("--no-product", action="store_true", help="skip the first layer's product alone")
    parser.add_argument("--no-popcount", action="store_true", help="skip the XNOR-popcount comparison")
    parser.add_argument("--json", help="write the numbers to this file too")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.models = "1,16,600", 3, "fmnist_2x100,mnist_3x100"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
    unknown = [m for m in models if not (MODELS / f"{m}.onnx").is_file() or m.split("_")[0] not in DATASETS]
    if unknown or args.reps < 1 or not sizes or min(sizes) < 1:
        parser.error(f"--models must be zoo models (unknown: {unknown}); --reps and --sizes >= 1")

    print(f"bnnmip {bnnmip.__version__}, numpy {np.__version__}, onnxruntime {ort.__version__} (1 thread), "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, bnnmip threads {n_threads()} "
          f"(from 2,048 rows), {describe()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.reps} paired repetitions per model and size, order alternating; a sample is the mean of "
          f"back-to-back calls\n")
    print(f"{'model':<14} {'rows':>6} {'bnnmip':>10} {'ort':>10} {'ratio':>6} {'(IQR)':>11} {'agree':>7}")
    rows = []
    for model in models:
        for n in sizes:
            r = forward_row(model, n, args.reps, args.pause)
            rows.append(r)
            print(f"{model:<14} {n:>6} {_time(r['bnnmip_s']):>10} {_time(r['ort_s']):>10} {r['ratio']:6.2f} "
                  f"{r['ratio_q1']:5.2f}-{r['ratio_q3']:<5.2f} {r['agree']:>7}", flush=True)
    worst = min(rows, key=lambda r: r["ratio"])
    print(f"\nratio = onnxruntime time / bnnmip time (> 1: bnnmip is faster), median and quartiles over the "
          f"repetitions; worst {worst['ratio']:.2f} ({worst['model']}, {worst['n']} rows); "
          f"load average now {os.getloadavg()[0]:.2f}")

    products = []
    if not args.no_product:
        widths = sorted({int(m.split("x")[1]) for m in models})
        print("\nThe first layer's product alone, one thread: numpy (OpenBLAS) vs a MatMul in onnxruntime (MLAS)")
        print(f"{'width':>6} {'rows':>6} {'numpy':>10} {'ort':>10} {'ratio':>6}")
        for width in widths:
            for n in sizes:
                r = product_row(width, n, args.reps, args.pause)
                products.append(r)
                print(f"{width:>6} {n:>6} {_time(r['numpy_s']):>10} {_time(r['ort_s']):>10} {r['ratio']:6.2f}",
                      flush=True)

    pop = []
    if not args.no_popcount:
        archs = sorted({m.split("_")[1] for m in models}, key=ARCHS.index)
        print("\n±1 hidden layers, one thread: float32 BLAS product vs bit-packed XNOR-popcount (packing included)")
        print(f"{'arch':>6} {'rows':>6} {'layers':>6} {'float32':>10} {'popcount':>10} {'popcount/f32':>13}")
        for arch in archs:
            for n in sizes:
                r = popcount_row(arch, batch("fmnist", n), args.reps)
                pop.append(r)
                print(f"{arch:>6} {n:>6} {r['hidden_layers']:>6} {_time(r['float32_s']):>10} "
                      f"{_time(r['popcount_s']):>10} {r['slowdown']:13.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"forward": rows, "product": products, "popcount": pop, "sizes": sizes,
                                               "reps": args.reps, "load_average": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
