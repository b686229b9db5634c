"""What the single-image and model commands do: ``info``, ``predict``, ``attack``, ``export``, ``minimal-eps``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..attacks import attack
from ..attacks.minimal_eps import minimal_eps
from ..errors import InvalidArgumentError
from ..io.datasets import load_npz
from ..io.manifest import default_slice
from ..io.onnx_reader import load_onnx
from ..io.runtime import check_onnx
from ..milp.formulation import attack_milp
from ..verify import verify


def _load(args) -> object:
    return load_onnx(args.model, levels=getattr(args, "levels", None))


def default_data(model: str | Path) -> Path | None:
    """The shipped test slice named for ``model`` in the ``manifest.json`` beside it, if any."""
    return default_slice(model)


def _data(args):
    path = args.data or default_data(args.model)
    if path is None:
        raise InvalidArgumentError("--data: no data file given and no manifest.json slice next to the model")
    return load_npz(path)


def cmd_info(args) -> int:
    net = _load(args)
    print(net.summary())
    return 0


def cmd_predict(args) -> int:
    net = _load(args)
    data = _data(args)
    X = data.inputs()[: args.limit]
    labels = data.labels[: args.limit]
    t0 = time.perf_counter()
    pred = net.predict(X)
    elapsed = time.perf_counter() - t0
    print(f"model      {args.model}")
    print(f"data       {data.name}: {len(X)} images")
    print(f"accuracy   {np.mean(pred == labels):.4f}  ({int(np.sum(pred == labels))}/{len(X)})")
    print(f"time       {elapsed * 1e3:.1f} ms ({len(X) / max(elapsed, 1e-9):,.0f} images/s)")
    check = check_onnx(net, X)
    print(f"onnxruntime {check}")
    return 0 if check.ok else 1


def _one_image(args) -> tuple[object, object, np.ndarray, int]:
    """(network, data slice, input, true label) for the commands that work on one ``--index``."""
    net, data = _load(args), _data(args)
    return (net, data, *_image(args, data))


def _image(args, data) -> tuple[np.ndarray, int]:
    """The input ``--index`` of the data slice (in [0, 1]) and its true label."""
    if not 0 <= args.index < len(data):
        raise InvalidArgumentError(f"--index {args.index}: {data.name} has images 0..{len(data) - 1}")
    return data.images[args.index].astype(np.float64) / 255.0, int(data.labels[args.index])


def _header(args, data, label: int) -> None:
    print(f"model      {args.model}")
    print(f"image      #{args.index} of {data.name} (true class {label})")


def cmd_attack(args) -> int:
    net, data, x, true_label = _one_image(args)
    options = {}
    if args.bounds != "interval":
        if args.method != "milp":
            raise InvalidArgumentError(f"--bounds {args.bounds}: only --method milp uses bounds")
        options["bounds"] = args.bounds
    result = attack(net, x, args.eps, method=args.method, target=args.target, time_limit=args.time_limit,
                    backend=args.backend, **options)
    _header(args, data, true_label)
    print(result.summary())
    verified = "yes (onnxruntime on the original ONNX file)" if result.verified else "no"
    print(f"{'verified':<10} {verified}")
    return 0


def cmd_export(args) -> int:
    net, data, x, true_label = _one_image(args)
    t0 = time.perf_counter()
    model = attack_milp(net, x, args.eps, args.target, bounds=args.bounds)
    built = time.perf_counter() - t0
    path = model.write(args.output)
    written = time.perf_counter() - t0 - built
    bounds = model.encoding.bounds
    fixed = sum(len(b.fixed) - b.n_free for b in bounds)
    _header(args, data, true_label)
    print(f"wrote      {path} ({path.stat().st_size:,} bytes, {written:.2f} s)")
    print(f"model      {model.num_rows} rows, {model.num_cols} columns ({model.num_binary} binary, "
          f"{model.num_integer - model.num_binary} other integer), {model.nnz} nonzeros")
    print(f"fixed      {fixed} of {sum(len(b.fixed) for b in bounds)} units fixed by {args.bounds} bounds "
          f"(built in {built:.2f} s)")
    print(f"objective  {model.sense} logit[{args.target}] - logit[{model.encoding.label}]")
    return 0


def cmd_verify(args) -> int:
    net, data, x, true_label = _one_image(args)
    result = verify(net, x, args.eps, time_limit=args.time_limit, levels=args.levels, method=args.method,
                    backend=args.backend)
    _header(args, data, true_label)
    print(result.summary())
    if result.details.get("proof"):
        print(f"{'proof':<10} {result.details['proof']}")
    phases = ", ".join(f"{name} {seconds:.2f} s ({verdict})" for name, seconds, verdict in result.details["phases"])
    print(f"{'phases':<10} {phases}")
    return 0


def cmd_minimal_eps(args) -> int:
    net, data, x, true_label = _one_image(args)
    result = minimal_eps(net, x, levels=args.levels, time_limit=args.time_limit, backend=args.backend,
                         bounds=args.bounds, method=args.method)
    _header(args, data, true_label)
    print(result.summary())
    return 0
