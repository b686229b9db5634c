"""The ``manifest.json`` of a model folder: which dataset, architecture and test slice each model has.

A manifest lists ``{"models": [{"file": ..., "dataset": ..., "arch": ..., "slice": ...}, ...]}``.
Files it names are taken only from the manifest's own folder (a plain name, no ``..`` and no
absolute path), so a manifest cannot point bnnmip at files elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BnnmipError, InvalidArgumentError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 2**20


def read_manifest(path: str | Path) -> list[dict]:
    """The entries of a manifest file; :class:`InvalidArgumentError` if it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidArgumentError(f"manifest {path}: over {MAX_MANIFEST_BYTES:,} bytes, not a manifest")
        entries = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise InvalidArgumentError(f"manifest {path}: not a manifest.json with a 'models' list ({e})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidArgumentError(f"manifest {path}: 'models' is not a list of tables")
    return entries


def manifest_entry(model: str | Path) -> dict:
    """The entry of ``model`` in the ``manifest.json`` beside it, or {} if there is none (or no valid manifest)."""
    model = Path(model)
    manifest = model.parent / MANIFEST
    if not manifest.is_file():
        return {}
    try:
        entries = read_manifest(manifest)
    except BnnmipError:
        return {}
    return next((e for e in entries if e.get("file") == model.name), {})


def sibling(folder: Path, name) -> Path | None:
    """``folder / name`` when ``name`` is a plain file name of an existing file in ``folder``, else None."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        return None
    path = folder / name
    return path if path.is_file() else None


def default_slice(model: str | Path) -> Path | None:
    """The shipped test slice the manifest beside ``model`` names for it, if any."""
    model = Path(model)
    return sibling(model.parent, manifest_entry(model).get("slice"))


def dataset_mismatch(model: str | Path, data: str | Path) -> str | None:
    """A warning when the manifest beside ``model`` says it was trained on another dataset than ``data`` holds.

    The data's dataset is the one whose shipped slice the data file is (by file name, in either file's
    manifest), else the first word of its name when that names a dataset the manifest knows
    (``mnist_test1000.npz``: mnist).  None when they match or either is unknown.
    """
    model, data = Path(model), Path(data)
    trained_on = manifest_entry(model).get("dataset")
    if not isinstance(trained_on, str):
        return None
    slices = {}
    for folder in {model.parent, data.parent}:
        manifest = folder / MANIFEST
        try:
            entries = read_manifest(manifest) if manifest.is_file() else []
        except BnnmipError:
            entries = []
        slices.update({e.get("slice"): e.get("dataset") for e in entries if isinstance(e.get("dataset"), str)})
    known = {d for d in slices.values() if d}
    holds = slices.get(data.name)
    if holds is None:
        word = data.stem.replace("-", "_").split("_")[0].lower()
        holds = word if word in known else None
    if holds is None or holds == trained_on:
        return None
    return f"{model} was trained on {trained_on} ({model.parent / MANIFEST}), but {data} holds {holds} images"
