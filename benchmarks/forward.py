#!/usr/bin/env python3
"""Forward throughput: bnnmip's ``BNN.logits`` against onnxruntime, in the same run, same inputs.

For each Fashion-MNIST architecture of the model zoo: a batch of 10,000 inputs (the shipped test
images tiled, float32, shape (n, 1, 28, 28)), timed ``--reps`` times alternately in bnnmip and in
onnxruntime (default session options: all graph optimizations, its own thread pool,
CPUExecutionProvider), with a short rest before each run: onnxruntime's pool threads spin for a
while after a run and would slow down whatever runs next.  The table gives the median times and
the ratio of throughputs bnnmip / onnxruntime (> 1: bnnmip is faster), as the median over the
repetitions of the ratio of each repetition's two adjacent runs, with its quartiles.

The second table documents the choice of the float32 product for the ±1 hidden layers: the same
hidden-layer products (from the real first-layer outputs of the same batch) computed as a float32
matrix product and as bit-packed XNOR-popcount (``np.bitwise_count`` on uint64 words, packing
included), both on one thread, checked to agree exactly.

    python benchmarks/forward.py                  # all eight architectures, batch 10,000
    python benchmarks/forward.py --quick          # a smoke run: two models, batch 600
    python benchmarks/forward.py --json out.json  # also write the numbers as JSON
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
from bnnmip.threads import n_threads, single_threaded_blas

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ARCHS = ("2x100", "2x200", "2x300", "2x400", "2x500", "3x100", "4x100", "5x100")


def batch(n: int) -> np.ndarray:
    """The shipped Fashion-MNIST test images tiled to ``n`` rows, float32 in [0, 1], (n, 1, 28, 28)."""
    images = load_npz(MODELS / "fmnist_test100.npz").images
    tiled = np.tile(images, (-(-n // len(images)), 1))[:n]
    return (tiled.astype(np.float32) / np.float32(255)).reshape(n, 1, 28, 28)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def forward_row(arch: str, X: np.ndarray, reps: int, pause: float) -> dict:
    """Median times of bnnmip and onnxruntime on ``X``, interleaved so both see the same load."""
    path = MODELS / f"fmnist_{arch}.onnx"
    net = bnnmip.load_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ours = net.logits(X)  # warm-up (caches, thread pool, buffers)
    (theirs,) = session.run(None, {name: X})
    agree = int(np.sum(np.argmax(ours, 1) == np.argmax(theirs, 1)))
    t_bnnmip, t_ort = [], []
    for rep in range(reps):
        runs = [(t_bnnmip, lambda: net.logits(X)), (t_ort, lambda: session.run(None, {name: X}))]
        for times, fn in runs if rep % 2 == 0 else runs[::-1]:
            time.sleep(pause)  # onnxruntime's threads spin for a while after a run
            times.append(timed(fn))
    tb, to = float(np.median(t_bnnmip)), float(np.median(t_ort))
    # Each repetition's two runs are adjacent in time: the median of their ratios cancels the
    # slower swings of a shared machine's load better than the ratio of the two medians.
    paired = np.array(t_ort) / np.array(t_bnnmip)
    return {"arch": arch, "n": len(X), "bnnmip_s": tb, "ort_s": to, "ratio": float(np.median(paired)),
            "ratio_q1": float(np.percentile(paired, 25)), "ratio_q3": float(np.percentile(paired, 75)),
            "agree": agree}


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
    """Times of the ±1 hidden layers' products: float32 BLAS vs XNOR-popcount, one thread each."""
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
    return {"arch": arch, "hidden_layers": len(layers), "float32_s": tf, "popcount_s": tp, "slowdown": tp / tf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000, help="inputs per forward pass (default 10,000)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per engine (default 15)")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds of rest before each timed run (default 0.1), so that neither engine "
                             "runs while the other's threads still spin")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2x100 and 3x100, batch 600, 2 reps")
    parser.add_argument("--no-popcount", action="store_true", help="skip the XNOR-popcount comparison")
    parser.add_argument("--json", help="write the numbers to this file too")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.reps, args.archs = 600, 2, "2x100,3x100"
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown or args.batch < 1 or args.reps < 1:
        parser.error(f"--archs must be among {','.join(ARCHS)} (got {unknown}); --batch and --reps >= 1")

    X = batch(args.batch)
    print(f"bnnmip {bnnmip.__version__}, numpy {np.__version__}, onnxruntime {ort.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, bnnmip threads {n_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"batch {args.batch:,} float32 inputs (shipped Fashion-MNIST test images tiled), "
          f"{args.reps} interleaved repetitions, {args.pause:g} s rest before each\n")
    print(f"{'arch':>6} {'bnnmip ms':>10} {'ort ms':>9} {'bnnmip img/s':>13} {'ort img/s':>11} "
          f"{'ratio':>6} {'(IQR)':>11} {'agree':>7}")
    rows = []
    for arch in archs:
        r = forward_row(arch, X, args.reps, args.pause)
        rows.append(r)
        print(f"{arch:>6} {r['bnnmip_s'] * 1e3:10.1f} {r['ort_s'] * 1e3:9.1f} {r['n'] / r['bnnmip_s']:13,.0f} "
              f"{r['n'] / r['ort_s']:11,.0f} {r['ratio']:6.2f} {r['ratio_q1']:5.2f}-{r['ratio_q3']:<5.2f} "
              f"{r['agree']:>7}", flush=True)
    worst = min(r["ratio"] for r in rows)
    print(f"\nratio = bnnmip throughput / onnxruntime throughput: median (and quartiles) over the repetitions of "
          f"the two adjacent runs' time ratio; worst {worst:.2f} (target >= 1.0)")

    pop = []
    if not args.no_popcount:
        print("\n±1 hidden layers, one thread: float32 BLAS product vs bit-packed XNOR-popcount (packing included)")
        print(f"{'arch':>6} {'layers':>6} {'float32 ms':>11} {'popcount ms':>12} {'popcount/f32':>13}")
        for arch in archs:
            r = popcount_row(arch, X, args.reps)
            pop.append(r)
            print(f"{arch:>6} {r['hidden_layers']:>6} {r['float32_s'] * 1e3:11.1f} {r['popcount_s'] * 1e3:12.1f} "
                  f"{r['slowdown']:13.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"forward": rows, "popcount": pop, "batch": args.batch,
                                               "reps": args.reps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
