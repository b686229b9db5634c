"""Taking a result away: ``result.json``, the inputs as ``.npy``, and a picture of the flip.

:func:`save_result` works for any result that has ``to_dict()``, ``x`` (the clean input), ``x_adv``
(None without a flip), ``label`` and ``adv_label``: :class:`~bnnmip.attacks.result.AttackResult`,
:class:`~bnnmip.attacks.minimal_eps.MinimalEpsResult` and the verifier's result all save this way.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..files import open_for_writing, write_file

_SMALL_ARRAY = 64  # arrays up to this size go into result.json as lists; larger ones are only described


def jsonable(value):
    """``value`` as plain JSON values: dataclasses and dicts as objects, enums as their values,
    numpy numbers as numbers, small arrays as lists (larger ones described), non-finite floats as None."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        if value.size <= _SMALL_ARRAY:
            return jsonable(value.tolist())
        return f"array of shape {value.shape}, {value.dtype}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def image_shape(size: int, shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """The 2-D shape to draw an input of ``size`` values: ``shape`` without its unit axes when that is
    2-D (a grayscale image), else a square when ``size`` is one, else one row."""
    if shape is not None:
        squeezed = tuple(d for d in shape if d != 1)
        if math.prod(shape) == size and len(squeezed) == 2:
            return squeezed
    side = math.isqrt(size)
    return (side, side) if side * side == size else (1, size)


def save_result(result, directory: str | os.PathLike, *, shape: tuple[int, ...] | None = None,
                context: dict | None = None) -> list[Path]:
    """Write ``result.json`` (``context`` first: which model, data and image, say), ``x.npy`` (the
    clean input) and, when there is a flip, ``x_adv.npy`` and ``triptych.png`` into ``directory``
    (created if needed); returns the paths written."""
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgumentError(f"{folder}: cannot create the folder ({e.strerror or e})") from e
    written = [folder / "result.json"]
    try:
        record = {**jsonable(dict(context or {})), **result.to_dict()}
        write_file(written[0], json.dumps(record, indent=2) + "\n")  # never through a link (bnnmip.files)
        for name, values in (("x.npy", result.x), ("x_adv.npy", result.x_adv)):
            if values is not None:
                with open_for_writing(folder / name, text=False) as f:
                    np.save(f, np.asarray(values, np.float64))
                written.append(folder / name)
        if result.x is not None and result.x_adv is not None:
            written.append(triptych(result, folder / "triptych.png", shape))
    except OSError as e:
        raise InvalidArgumentError(f"{folder}: cannot write ({e.strerror or e})") from e
    return written


def triptych(result, path: Path, shape: tuple[int, ...] | None = None) -> Path:
    """A PNG of the clean input, the adversarial one and their difference scaled to full contrast."""
    from matplotlib.figure import Figure  # third-party, and slow to import: only when a picture is drawn

    x, x_adv = np.asarray(result.x, np.float64), np.asarray(result.x_adv, np.float64)
    dims = image_shape(x.size, shape)
    diff = x_adv - x
    scale = float(np.abs(diff).max(initial=0.0)) or 1.0
    lo, hi = min(0.0, x.min(), x_adv.min()), max(1.0, x.max(), x_adv.max())
    fig = Figure(figsize=(7.2, 2.6), dpi=90, layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(x.reshape(dims), cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title(f"clean: class {result.label}")
    axes[1].imshow(x_adv.reshape(dims), cmap="gray", vmin=lo, vmax=hi)
    axes[1].set_title(f"adversarial: class {result.adv_label}")
    shown = axes[2].imshow(diff.reshape(dims), cmap="RdBu_r", vmin=-scale, vmax=scale)
    axes[2].set_title(f"difference, ×{1 / scale:.3g}" if scale != 1.0 else "difference")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    with open_for_writing(path, text=False) as f:
        fig.savefig(f, format="png")
    return path
