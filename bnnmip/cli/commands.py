"""What the single-image and model commands do: ``info``, ``predict``, ``attack``, ``export``, ``minimal-eps``.

The steps every command on one image shares — :func:`one_image` (refusing a misclassified image),
:func:`checked_radius` (grid steps, no empty radius), :func:`progress_line`, :func:`print_header` and
:func:`save_if_asked` — are public so that further commands (``verify``) use the same ones.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..attacks import attack
from ..attacks.minimal_eps import minimal_eps
from ..box import grid_radius
from ..errors import InvalidArgumentError
from ..io.datasets import load_npz
from ..io.manifest import dataset_mismatch, default_slice
from ..io.onnx_reader import load_onnx
from ..io.runtime import check_onnx
from ..milp.formulation import attack_milp
from ..progress import NO_PROGRESS, ProgressLine
from ..validate import check_eps
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
    data = load_npz(path)
    warning = dataset_mismatch(args.model, path)
    if warning:
        print(f"bnnmip: warning: {warning}", file=sys.stderr)
    return data


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


def one_image(args) -> tuple[object, object, np.ndarray, int]:
    """(network, data slice, input, true label) for the commands that work on one ``--index``.

    A misclassified image is refused unless ``--allow-misclassified``: attacking it would only push
    it further from a class it already misses.
    """
    net, data = _load(args), _data(args)
    x, label = _image(args, data)
    predicted = int(net.predict(x)[0])
    if predicted != label and not getattr(args, "allow_misclassified", True):
        raise InvalidArgumentError(
            f"--index {args.index}: image {args.index} of {data.name} is misclassified (true class {label}, "
            f"the network predicts {predicted}), so there is no correct prediction to attack; "
            "pass --allow-misclassified to attack its prediction anyway")
    return net, data, x, label


def _image(args, data) -> tuple[np.ndarray, int]:
    """The input ``--index`` of the data slice (in [0, 1]) and its true label."""
    if not 0 <= args.index < len(data):
        raise InvalidArgumentError(f"--index {args.index}: {data.name} has images 0..{len(data) - 1}")
    return data.images[args.index].astype(np.float64) / 255.0, int(data.labels[args.index])


def checked_radius(args, net) -> float:
    """The radius to search: ``--eps`` or ``--eps-steps`` grid steps, refused when it is no perturbation
    at all (0 steps, unless ``--allow-zero``) or reaches beyond the input range."""
    lo, hi = net.input_range
    if args.eps_steps is not None:
        if net.levels is None:
            raise InvalidArgumentError("--eps-steps: counts grid steps, but --continuous has no grid; give --eps")
        if args.eps_steps < 0:
            raise InvalidArgumentError(f"--eps-steps {args.eps_steps}: expected a number of steps >= 0")
        eps, given = args.eps_steps * (hi - lo) / net.levels, f"--eps-steps {args.eps_steps}"
    else:
        eps, given = check_eps(args.eps, "--eps"), f"--eps {args.eps:g}"
    if eps > (hi - lo) * (1 + 1e-12):
        raise InvalidArgumentError(f"{given}: larger than the input range [{lo:g}, {hi:g}]; a radius of "
                                   f"{hi - lo:g} already reaches every input")
    radius = grid_radius(eps, net.levels, net.input_range)
    if radius.value == 0 and not args.allow_zero:
        if eps > 0:
            one = grid_radius(radius.step, net.levels, net.input_range)
            raise InvalidArgumentError(
                f"{given}: below one grid step ({one}), so only the clean input would be searched; give "
                f"--eps-steps 1 (or more), --continuous, or --allow-zero to check the clean input alone")
        raise InvalidArgumentError(f"{given}: a radius of 0 searches the clean input alone; give a positive "
                                   "radius, or --allow-zero to do just that")
    return eps


def print_header(args, data, label: int, net, x: np.ndarray) -> None:
    print(f"model      {args.model}")
    print(f"image      #{args.index} of {data.name} (true class {label}, predicted {int(net.predict(x)[0])})")


def progress_line(args):
    """The live progress line on stderr: ``--progress``, ``--no-progress``, else when stderr is a terminal."""
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    return ProgressLine() if show else NO_PROGRESS


def save_if_asked(args, result, net, data) -> None:
    if args.save:
        paths = result.save(args.save, shape=net.input_shape,
                            context={"model": str(args.model), "data": data.name, "index": args.index})
        print(f"{'saved':<10} {', '.join(str(p) for p in paths)}")


def cmd_attack(args) -> int:
    net, data, x, true_label = one_image(args)
    eps = checked_radius(args, net)
    options = {}
    if args.bounds != "interval":
        if args.method != "milp":
            raise InvalidArgumentError(f"--bounds {args.bounds}: only --method milp uses bounds")
        options["bounds"] = args.bounds
    with progress_line(args) as line:
        result = attack(net, x, eps, method=args.method, target=args.target, time_limit=args.time_limit,
                        backend=args.backend, progress=line, **options)
    print_header(args, data, true_label, net, x)
    print(result.summary())
    save_if_asked(args, result, net, data)
    return 0


def cmd_export(args) -> int:
    net, data, x, true_label = one_image(args)
    eps = checked_radius(args, net)
    t0 = time.perf_counter()
    model = attack_milp(net, x, eps, args.target, bounds=args.bounds)
    built = time.perf_counter() - t0
    path = model.write(args.output)
    written = time.perf_counter() - t0 - built
    bounds = model.encoding.bounds
    fixed = sum(len(b.fixed) - b.n_free for b in bounds)
    print_header(args, data, true_label, net, x)
    print(f"eps        {grid_radius(eps, net.levels, net.input_range).describe()}")
    print(f"wrote      {path} ({path.stat().st_size:,} bytes, {written:.2f} s)")
    print(f"model      {model.num_rows} rows, {model.num_cols} columns ({model.num_binary} binary, "
          f"{model.num_integer - model.num_binary} other integer), {model.nnz} nonzeros")
    print(f"fixed      {fixed} of {sum(len(b.fixed) for b in bounds)} units fixed by {args.bounds} bounds "
          f"(built in {built:.2f} s)")
    print(f"objective  {model.sense} logit[{args.target}] - logit[{model.encoding.label}]")
    return 0


def cmd_verify(args) -> int:
    net, data, x, true_label = one_image(args)
    eps = checked_radius(args, net)
    with progress_line(args) as line:
        result = verify(net, x, eps, time_limit=args.time_limit, levels=args.levels, method=args.method,
                        backend=args.backend, progress=line)
    print_header(args, data, true_label, net, x)
    print(result.summary())
    phases = ", ".join(f"{name} {seconds:.2f} s ({verdict})" for name, seconds, verdict in result.details["phases"])
    print(f"{'phases':<10} {phases}")
    save_if_asked(args, result, net, data)
    return 0


def cmd_minimal_eps(args) -> int:
    net, data, x, true_label = one_image(args)
    with progress_line(args) as line:
        result = minimal_eps(net, x, levels=args.levels, time_limit=args.time_limit, backend=args.backend,
                             bounds=args.bounds, method=args.method, progress=line)
    print_header(args, data, true_label, net, x)
    print(result.summary())
    save_if_asked(args, result, net, data)
    return 0
