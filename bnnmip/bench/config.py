"""Benchmark configurations: a TOML file → a validated, frozen :class:`BenchConfig`.

A configuration names what to run; :func:`bnnmip.bench.jobs.expand` turns it into jobs (the cross
product models × images × ε × methods × backends × targets).  Example::

    name = "smoke"                 # default: the file's stem
    time_limit = 10.0              # seconds per job
    threads = 1                    # solver threads per job
    levels = 255                   # input grid (8-bit images)
    eps_levels = [2, 5]            # ε = k / levels ... or: eps = [0.01, 0.02]
    methods = ["milp", "pgd"]      # keys of bnnmip.attacks.METHODS
    backends = ["highs"]           # for the methods that solve MILPs (pgd gets one job)
    # targets = [3]                # default: untargeted
    # manifest = "models/manifest.json"   (the default; for dataset/arch selectors)
    # db = "../results/smoke.sqlite"      (relative to this file; `--db` overrides)

    [images]                       # for every model: one of
    first_correct = 5              # the first 5 images the model classifies correctly
    # first = 100                  # the correctly classified ones among the first 100
    # indices = [0, 7, 12]         # exactly these (misclassified ones included)
    # skip = 20                    # with first_correct: pass over the first 20 correct ones
    #                                (images held out from tuning: tune on 0-19, judge on 20-39)

    [[models]]
    file = "models/fmnist_2x100.onnx"    # data: the manifest slice beside it, or `data = "..."`

    [[models]]
    dataset = "mnist"              # through the manifest; `arch` omitted = every architecture
    arch = ["2x100", "3x100"]
    images = { first = 1000 }      # per-model override of [images]

    [options.milp]                 # extra keyword options of one method
    stop_at_flip = true

Relative paths are looked up next to the configuration file first, then at the repository root
(the closest folder above it holding ``pyproject.toml`` or ``.git``).  Every mistake raises
:class:`~bnnmip.InvalidArgumentError` naming the key at fault.

A configuration is a file from elsewhere too: it is read only up to :data:`MAX_CONFIG_BYTES`
(and TOML nested too deep is refused), ``name`` must be a plain name (it names the default
database ``<name>.sqlite`` in the current folder), and ``db`` must stay inside the repository
root (or the configuration's folder when there is none): no absolute path, no way out by ``..``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..attacks import METHODS
from ..box import DEFAULT_LEVELS
from ..errors import InvalidArgumentError
from ..io.manifest import manifest_entry, read_manifest, sibling
from ..validate import check_choice, check_levels, check_positive_int, check_threads
from .config_values import (
    check_backends,
    check_keys,
    eps_list,
    nonempty_string,
    plain_name,
    string_list,
    target_list,
    time_limit_value,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_CONFIG_BYTES = 2**20
"""The size of a configuration file."""
MAX_MODELS = 1_000
"""Models in one configuration (each is loaded and calibrated to expand the jobs)."""

#: Methods that never call a MILP solver: one job each, whatever ``backends`` says.
SOLVER_FREE_METHODS = frozenset({"pgd"})

_TOP_KEYS = {"name", "time_limit", "threads", "levels", "eps", "eps_levels", "methods", "backends", "targets",
             "manifest", "db", "images", "models", "options"}
_MODEL_KEYS = {"file", "dataset", "arch", "data", "images", "eps", "eps_levels"}
_IMAGE_KEYS = {"first_correct", "first", "indices", "skip"}
_ARCH_RE = re.compile(r"^(?P<dataset>.+)_(?P<arch>\d+x\d+)$")


@dataclass(frozen=True)
class ImageSelection:
    """Which images of a data slice to attack: exactly one field is set.

    ``first_correct``: the first N images the model classifies correctly (after passing over the
    first ``skip`` of them); ``first``: the correctly classified images among the first N;
    ``indices``: exactly these images.
    """

    first_correct: int | None = None
    first: int | None = None
    indices: tuple[int, ...] | None = None
    skip: int = 0

    def select(self, labels, preds) -> list[int]:
        """Indices into the slice, given its true ``labels`` and the model's ``preds``."""
        n = len(labels)
        if self.indices is not None:
            bad = [i for i in self.indices if i >= n]
            if bad:
                raise InvalidArgumentError(f"images.indices: {bad} out of range for a slice of {n} images")
            return list(self.indices)
        correct = [i for i in range(n) if labels[i] == preds[i]]
        if self.first is not None:
            return [i for i in correct if i < self.first]
        return correct[self.skip: self.skip + self.first_correct]

    def describe(self) -> str:
        if self.indices is not None:
            return f"indices {list(self.indices)}"
        if self.first is not None:
            return f"correctly classified among the first {self.first}"
        after = f" after the first {self.skip}" if self.skip else ""
        return f"first {self.first_correct} correctly classified{after}"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a benchmark: its ONNX file, its data slice and how to pick images."""

    path: Path
    data: Path
    dataset: str
    arch: str
    images: ImageSelection
    eps: tuple[float, ...] | None = None  # per-model radii (default: the config's)


@dataclass(frozen=True)
class BenchConfig:
    """A validated benchmark configuration (see the module docstring for the TOML keys)."""

    name: str
    models: tuple[ModelSpec, ...]
    eps: tuple[float, ...]
    methods: tuple[str, ...]
    backends: tuple[str, ...] = ("highs",)
    targets: tuple[int | None, ...] = (None,)
    time_limit: float = 60.0
    threads: int = 1
    levels: int = DEFAULT_LEVELS
    options: tuple[tuple[str, str], ...] = ()  # (method, canonical JSON of its keyword options)
    db: Path | None = None
    source: Path | None = None

    def method_options(self, method: str) -> str:
        """Canonical JSON of ``method``'s extra keyword options ('{}' if none)."""
        return dict(self.options).get(method, "{}")

    def backends_for(self, method: str) -> tuple[str | None, ...]:
        """The backends ``method`` runs with: all configured ones, or (None,) for solver-free methods."""
        return (None,) if method in SOLVER_FREE_METHODS else self.backends


def load_config(path: str | os.PathLike) -> BenchConfig:
    """Read and validate a benchmark configuration file (TOML)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"config {path}: no such file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise InvalidArgumentError(f"config {path}: over bnnmip's limit of {MAX_CONFIG_BYTES:,} bytes")
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"config {path}: not valid TOML ({e})") from e
    except RecursionError:
        raise InvalidArgumentError(f"config {path}: not valid TOML (nested too deep)") from None
    except OSError as e:
        raise InvalidArgumentError(f"config {path}: cannot read it ({e.strerror or e})") from None
    return parse_config(data, path)


def parse_config(data: Mapping, source: str | os.PathLike) -> BenchConfig:
    """Validate the TOML table ``data`` of the configuration file ``source`` (paths resolve from it)."""
    source = Path(source).resolve()
    try:
        return _Parser(data, source).config()
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"config {source.name}: {e}") from None


class _Parser:
    def __init__(self, data: Mapping, source: Path):
        self.data = data
        self.source = source
        self.roots = [source.parent] + [r for r in [repository_root(source.parent)] if r and r != source.parent]

    def config(self) -> BenchConfig:
        d = self.data
        check_keys(d, _TOP_KEYS, "")
        levels = self.levels = check_levels(d.get("levels", DEFAULT_LEVELS)) or DEFAULT_LEVELS
        methods = self.methods()
        backends = string_list(d.get("backends", ["highs"]), "backends")
        if any(m not in SOLVER_FREE_METHODS for m in methods):
            check_backends(backends)
        images = _images(d.get("images"), "images")
        return BenchConfig(
            name=plain_name(d.get("name", self.source.stem), "name"),
            models=self.models(images),
            eps=eps_list(d, levels) if ("eps" in d or "eps_levels" in d) or not self.per_model_eps else (),
            methods=methods,
            backends=backends,
            targets=target_list(d.get("targets")),
            time_limit=time_limit_value(d.get("time_limit", 60.0), "time_limit"),
            threads=check_threads(d.get("threads", 1), "threads") or 1,
            levels=levels,
            options=self.options(methods),
            db=self.confined(d["db"], "db") if "db" in d else None,
            source=self.source,
        )

    @property
    def per_model_eps(self) -> bool:
        entries = self.data.get("models")
        return isinstance(entries, list) and bool(entries) and all(
            isinstance(e, Mapping) and ("eps" in e or "eps_levels" in e) for e in entries)

    def methods(self) -> tuple[str, ...]:
        if "methods" not in self.data:
            raise InvalidArgumentError("methods: missing (a list of attack methods)")
        methods = string_list(self.data["methods"], "methods")
        for i, m in enumerate(methods):
            check_choice(m, METHODS, f"methods[{i}]")
        return methods

    def options(self, methods: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        table = self.data.get("options", {})
        if not isinstance(table, Mapping):
            raise InvalidArgumentError("options: expected a table of per-method tables ([options.milp])")
        out = []
        for method, opts in table.items():
            if method not in methods:
                raise InvalidArgumentError(f"options.{method}: not one of this config's methods {list(methods)}")
            if not isinstance(opts, Mapping):
                raise InvalidArgumentError(f"options.{method}: expected a table of keyword options")
            reserved = {"target", "time_limit", "backend", "threads", "method"} & set(opts)
            if reserved:
                raise InvalidArgumentError(f"options.{method}: {sorted(reserved)} are set by the runner, not here")
            try:
                out.append((method, json.dumps(dict(opts), sort_keys=True, separators=(",", ":"))))
            except (TypeError, ValueError, RecursionError) as e:
                raise InvalidArgumentError(f"options.{method}: values must be numbers, strings, booleans or "
                                           f"lists/tables of them ({type(e).__name__})") from None
        return tuple(sorted(out))

    def confined(self, value, key: str) -> Path:
        """A path the configuration may write: relative, and inside the repository root (or its own folder)."""
        rel = Path(nonempty_string(value, key))
        root = self.roots[-1].resolve()
        path = (self.source.parent / rel).resolve()
        if rel.is_absolute() or "\0" in str(rel) or (path != root and root not in path.parents):
            raise InvalidArgumentError(f"{key}={str(rel)!r}: outside {root} (a configuration may only name a "
                                       "database inside its repository or folder; use --db for another place)")
        return path

    def resolve(self, value, key: str, *, must_exist: bool = True) -> Path:
        """A path from the config: absolute, or relative to the config file or the repository root."""
        rel = Path(nonempty_string(value, key)).expanduser()
        candidates = [rel] if rel.is_absolute() else [root / rel for root in self.roots]
        for c in candidates:
            if c.exists() or not must_exist:
                return c.resolve()
        raise InvalidArgumentError(f"{key}={str(rel)!r}: no such file (looked in {', '.join(map(str, candidates))})")

    def models(self, default_images: ImageSelection | None) -> tuple[ModelSpec, ...]:
        entries = self.data.get("models")
        if not isinstance(entries, list) or not entries:
            raise InvalidArgumentError("models: missing (a list of [[models]] tables with file= or dataset=/arch=)")
        specs: list[ModelSpec] = []
        for i, entry in enumerate(entries):
            key = f"models[{i}]"
            if not isinstance(entry, Mapping):
                raise InvalidArgumentError(f"{key}: expected a table with file= or dataset=/arch=")
            check_keys(entry, _MODEL_KEYS, key + ".")
            images = _images(entry.get("images"), key + ".images") or default_images
            if images is None:
                raise InvalidArgumentError(f"{key}.images: missing (set [images] or images = {{...}} per model)")
            if "file" in entry:
                found = [self.file_model(entry, key, images)]
            else:
                found = self.manifest_models(entry, key, images)
            if "eps" in entry or "eps_levels" in entry:
                eps = eps_list(entry, self.levels, key + ".")
                found = [replace(spec, eps=eps) for spec in found]
            specs.extend(found)
            if len(specs) > MAX_MODELS:
                raise InvalidArgumentError(f"{key}: over bnnmip's limit of {MAX_MODELS:,} models in one configuration")
        return tuple(specs)

    def file_model(self, entry: Mapping, key: str, images: ImageSelection) -> ModelSpec:
        path = self.resolve(entry["file"], key + ".file")
        if not path.is_file():
            raise InvalidArgumentError(f"{key}.file={str(entry['file'])!r}: not a file")
        info = manifest_entry(path)
        stem = _ARCH_RE.match(path.stem)
        dataset = entry.get("dataset", info.get("dataset") or (stem["dataset"] if stem else path.stem))
        arch = entry.get("arch", info.get("arch") or (stem["arch"] if stem else "?"))
        if "data" in entry:
            data = self.resolve(entry["data"], key + ".data")
        elif sibling(path.parent, info.get("slice")):
            data = sibling(path.parent, info.get("slice"))
        else:
            raise InvalidArgumentError(f"{key}.data: missing, and no manifest.json slice next to {path.name}")
        dataset, arch = nonempty_string(dataset, key + ".dataset"), nonempty_string(arch, key + ".arch")
        return ModelSpec(path, data, dataset, arch, images)

    def manifest_models(self, entry: Mapping, key: str, images: ImageSelection) -> list[ModelSpec]:
        if "dataset" not in entry:
            raise InvalidArgumentError(f"{key}: give file= or dataset= (with optional arch=)")
        manifest = self.resolve(self.data.get("manifest", "models/manifest.json"), "manifest")
        listed = read_manifest(manifest)
        datasets = string_list(entry["dataset"], key + ".dataset")
        archs = string_list(entry["arch"], key + ".arch") if "arch" in entry else None
        specs = []
        for ds in datasets:
            available = [e for e in listed if e.get("dataset") == ds]
            if not available:
                raise InvalidArgumentError(f"{key}.dataset={ds!r}: no model of that dataset in {manifest}")
            by_arch = {e.get("arch"): e for e in available}
            for arch in archs or [e.get("arch") for e in available]:
                if arch not in by_arch:
                    raise InvalidArgumentError(f"{key}.arch={arch!r}: no {ds} model of that architecture in {manifest} "
                                               f"(has {sorted(by_arch)})")
                e = by_arch[arch]
                path = sibling(manifest.parent, e.get("file"))
                if path is None:
                    raise InvalidArgumentError(f"{key}: model file {e.get('file')!r} listed in {manifest} is not a "
                                               "file in that folder")
                if "data" in entry:
                    data = self.resolve(entry["data"], key + ".data")
                elif sibling(manifest.parent, e.get("slice")):
                    data = sibling(manifest.parent, e.get("slice"))
                else:
                    raise InvalidArgumentError(f"{key}.data: missing, and {manifest.name} names no existing slice "
                                               f"for {path.name}")
                specs.append(ModelSpec(path.resolve(), data.resolve(), ds, str(arch), images))
        return specs


def repository_root(start: Path) -> Path | None:
    """The closest folder at or above ``start`` that holds ``pyproject.toml`` or ``.git``."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def _images(value, key: str) -> ImageSelection | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{key}: expected a table with one of {sorted(_IMAGE_KEYS)}")
    check_keys(value, _IMAGE_KEYS, key + ".")
    value = dict(value)
    skip = value.pop("skip", None)
    kinds = sorted(_IMAGE_KEYS - {"skip"})
    if len(value) != 1:
        raise InvalidArgumentError(f"{key}: give exactly one of {kinds}")
    (kind, v), = value.items()
    if skip is not None:
        if kind != "first_correct":
            raise InvalidArgumentError(f"{key}.skip: only goes with first_correct")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise InvalidArgumentError(f"{key}.skip={skip!r}: expected a number of images (integer >= 0)")
        return ImageSelection(first_correct=check_positive_int(v, f"{key}.{kind}"), skip=skip)
    if kind == "indices":
        if not isinstance(v, list) or not v:
            raise InvalidArgumentError(f"{key}.indices={v!r}: expected a non-empty list of image indices")
        for i, idx in enumerate(v):
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                raise InvalidArgumentError(f"{key}.indices[{i}]={idx!r}: expected an image index (integer >= 0)")
        return ImageSelection(indices=tuple(dict.fromkeys(v)))
    return ImageSelection(**{kind: check_positive_int(v, f"{key}.{kind}")})
