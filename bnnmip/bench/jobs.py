"""Jobs: one attack on one image, and their expansion from a :class:`BenchConfig`.

A :class:`Job` carries everything a worker needs (the model's path and sha256, the image's pixels,
ε, method, backend, limits), so workers never read the configuration or the data slice.  Its
:attr:`Job.key` identifies the job across runs: the results store holds at most one row per key,
which is what makes an interrupted benchmark resumable.  The key holds every input that can
change a job's answer (:func:`job_key`); keys of version 1 (before the grid ``levels`` and the
true label were part of it) are rewritten by :func:`key_from_v1`.

The job list is counted before it is built: a configuration whose cross product exceeds
:data:`MAX_JOBS` is refused before any job is allocated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidArgumentError
from ..io.datasets import load_npz
from ..io.onnx_reader import load_onnx
from .config import BenchConfig, ModelSpec

MAX_JOBS = 250_000
"""Jobs in one configuration (each is a few hundred bytes in memory, plus a row in the store)."""
KEY_VERSION = "v2"


def job_key(sha256: str, image_index: int, pixel_digest: str, eps: float, levels: int, label: int, method: str,
            backend: str | None, target: int | None, time_limit: float, options: str) -> str:
    """The identity of a job: every input that can change its answer or how its row is counted.

    ``v2 | model sha256 | image index | pixel digest | ε | levels | true label | method | backend | target |
    time limit | options``: the pixel digest keeps a changed data slice from passing for the old one,
    ``levels`` changes the box (the grid), the label decides whether the row counts in a flip rate.
    ``threads`` is deliberately not part of it (it changes speed, not the question asked).
    """
    return "|".join([
        KEY_VERSION, sha256, str(image_index), pixel_digest, repr(float(eps)), str(int(levels)), str(int(label)),
        method, backend or "-", "any" if target is None else str(target), repr(float(time_limit)), options,
    ])


def key_from_v1(old: str, levels: int, label: int) -> str:
    """A version-1 key (no levels, no label) as today's key, given the row's levels and true label."""
    sha, index, digest, eps, method, backend, target, time_limit, options = old.split("|", 8)
    return "|".join([KEY_VERSION, sha, index, digest, eps, str(int(levels)), str(int(label)), method, backend, target,
                     time_limit, options])


@dataclass(frozen=True)
class ModelRef:
    """A model file as the jobs see it: absolute path, content hash and what it is."""

    path: str
    sha256: str
    dataset: str
    arch: str
    data: str  # the data slice the images come from


@dataclass(frozen=True)
class Job:
    """One attack: ``method`` (with ``backend``) on image ``image_index`` of the model's slice at radius ``eps``.

    ``label`` is the true label, ``pred`` the model's clean prediction; ``image`` the raw uint8
    pixels (the network input is ``pixels / 255``).  ``options`` is the canonical JSON of extra
    keyword options for the method.
    """

    model: ModelRef
    image_index: int
    image: bytes
    label: int
    pred: int
    eps: float
    levels: int
    method: str
    backend: str | None
    target: int | None
    time_limit: float
    threads: int
    options: str = "{}"

    @property
    def key(self) -> str:
        """The job's identity across runs (the results store's primary key): see :func:`job_key`."""
        return job_key(self.model.sha256, self.image_index, hashlib.sha256(self.image).hexdigest()[:16], self.eps,
                       self.levels, self.label, self.method, self.backend, self.target, self.time_limit, self.options)

    @property
    def eps_levels(self) -> float:
        """ε in pixel levels (ε · levels)."""
        return round(self.eps * self.levels, 9)

    def input(self) -> np.ndarray:
        """The clean network input in [0, 1]."""
        return np.frombuffer(self.image, np.uint8).astype(np.float64) / 255.0

    def attack_options(self) -> dict:
        """Keyword arguments for :func:`bnnmip.attacks.attack` besides the image and ε."""
        kwargs = {"method": self.method, "target": self.target, "time_limit": self.time_limit}
        if self.backend is not None:
            kwargs.update(backend=self.backend, threads=self.threads)
        kwargs.update(json.loads(self.options))
        return kwargs


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expand(config: BenchConfig) -> list[Job]:
    """The jobs of ``config``: models × ε × images × methods × backends × targets, without duplicates.

    Each model is loaded once here to classify its slice (image selection needs the clean
    predictions).  Targeted jobs whose target equals the clean prediction are left out.
    """
    jobs: dict[str, Job] = {}
    for spec in config.models:
        for job in _model_jobs(config, spec, len(jobs)):
            jobs.setdefault(job.key, job)
    return list(jobs.values())


def _model_jobs(config: BenchConfig, spec: ModelSpec, already: int) -> list[Job]:
    net = load_onnx(spec.path, levels=config.levels)
    data = load_npz(spec.data)
    if data.images.shape[1] != net.n_inputs:
        raise InvalidArgumentError(f"models: {spec.data.name} has {data.images.shape[1]} pixels per image, "
                                   f"{spec.path.name} expects {net.n_inputs}")
    bad = [t for t in config.targets if t is not None and t >= net.n_classes]
    if bad:
        raise InvalidArgumentError(f"targets: {bad} out of range for {spec.path.name} ({net.n_classes} classes)")
    preds = net.predict(data.inputs())
    ref = ModelRef(str(spec.path), file_sha256(spec.path), spec.dataset, spec.arch, str(spec.data))
    selected = spec.images.select(data.labels, preds)
    radii = spec.eps or config.eps
    per_image = sum(len(config.backends_for(m)) for m in config.methods) * len(config.targets)
    count = len(radii) * len(selected) * per_image
    if count + already > MAX_JOBS:
        raise InvalidArgumentError(f"models: {already + count:,} jobs or more (at {spec.path.name}), over bnnmip's "
                                   f"limit of {MAX_JOBS:,} for one configuration; refused before building them")
    pixels_of = {i: np.ascontiguousarray(data.images[i], dtype=np.uint8).tobytes() for i in selected}
    jobs = []
    for eps in radii:
        for i in selected:
            pixels = pixels_of[i]  # one bytes object per image, shared by its jobs
            for method in config.methods:
                for backend in config.backends_for(method):
                    for target in config.targets:
                        if target is not None and target == preds[i]:
                            continue
                        jobs.append(Job(ref, int(i), pixels, int(data.labels[i]), int(preds[i]), eps, config.levels,
                                        method, backend, target, config.time_limit, config.threads,
                                        config.method_options(method)))
    return jobs
