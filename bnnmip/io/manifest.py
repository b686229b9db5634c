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
