"""Jobs: one attack on one image, and their expansion from a :class:`BenchConfig`.

A :class:`Job` carries everything a worker needs (the model's path and sha256, the image's pixels,
ε, method, backend, limits), so workers never read the configuration or the data slice.  Its
:attr:`Job.key` identifies the job across runs: the results store holds at most one row per key,
which is what makes an interrupted benchmark resumable.
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
        """The job's identity across runs (the results store's primary key).

        ``model sha256 | image index | pixel digest | ε | method | backend | target | time limit |
        options``: the pixel digest keeps a changed data slice from passing for the old one;
        ``threads`` is deliberately not part of it (it changes speed, not the question asked).
        """
        return "|".join([
            self.model.sha256, str(self.image_index), hashlib.sha256(self.image).hexdigest()[:16], repr(self.eps),
            self.method, self.backend or "-", "any" if self.target is None else str(self.target),
            repr(self.time_limit), self.options,
        ])

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
        for job in _model_jobs(config, spec):
            jobs.setdefault(job.key, job)
    return list(jobs.values())


def _model_jobs(config: BenchConfig, spec: ModelSpec) -> list[Job]:
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
    jobs = []
    for eps in spec.eps or config.eps:
        for i in spec.images.select(data.labels, preds):
            pixels = np.ascontiguousarray(data.images[i], dtype=np.uint8).tobytes()
            for method in config.methods:
                for backend in config.backends_for(method):
                    for target in config.targets:
                        if target is not None and target == preds[i]:
                            continue
                        jobs.append(Job(ref, int(i), pixels, int(data.labels[i]), int(preds[i]), eps, config.levels,
                                        method, backend, target, config.time_limit, config.threads,
                                        config.method_options(method)))
    return jobs
