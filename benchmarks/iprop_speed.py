"""IProp iterations per second, this checkout against a baseline revision, side by side — issue 12.

    python benchmarks/iprop_speed.py                       # 2x500, both datasets, vs 7c5b386
    python benchmarks/iprop_speed.py --arch 2x100 --images 1 --seconds 2 --baseline HEAD

The baseline revision is extracted with ``git archive`` into a temporary folder; each revision
runs in its own worker process, and the two take turns image by image (same images, radii, seed
and time limit), so both see the same machine load.  An iteration is one backward pass of target
propagation and the exact check of its candidates; the rate is all iterations over all seconds
(a run that flips the prediction early counts the time it took).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RADII = {"fmnist": (2, 5), "mnist": (5, 10)}
SLICES = {"fmnist": "fmnist_test100.npz", "mnist": "mnist_test1000.npz"}

WORKER = r"""
import json, sys
import numpy as np
import bnnmip
from bnnmip.attacks import attack

nets = {}
for line in sys.stdin:
    job = json.loads(line)
    if job["model"] not in nets:
        net = bnnmip.load_onnx(job["model"], levels=255)
        X = bnnmip.datasets.load_npz(job["data"]).inputs()
        nets[job["model"]] = (net, X)
    net, X = nets[job["model"]]
    r = attack(net, X[job["image"]], job["eps"] / 255, method="iprop", time_limit=job["seconds"], seed=0)
    print(json.dumps({"iterations": r.details["iterations"], "time": r.time, "status": str(r.status)}), flush=True)
"""


class Worker:
    """A Python process that imports bnnmip from ``source`` and runs IProp jobs read from stdin."""

    def __init__(self, source: Path):
        env = dict(os.environ, PYTHONPATH=str(source))
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(source))

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died on {job}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def extract(revision: str, folder: Path) -> Path:
    """The package of ``revision`` (``git archive``) under ``folder``."""
    archive = folder / "baseline.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", revision, "bnnmip"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


def jobs(arch: str, images: int, seconds: float) -> list[dict]:
    import numpy as np

    import bnnmip

    out = []
    for dataset, radii in RADII.items():
        model, data = ROOT / "models" / f"{dataset}_{arch}.onnx", ROOT / "models" / SLICES[dataset]
        net, slice_ = bnnmip.load_onnx(model, levels=255), bnnmip.datasets.load_npz(data)
        chosen = np.flatnonzero(net.predict(slice_.inputs()) == slice_.labels)[:images]
        out += [{"model": str(model), "data": str(data), "image": int(i), "eps": eps, "seconds": seconds,
                 "dataset": dataset} for eps in radii for i in chosen]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="2x500")
    parser.add_argument("--images", type=int, default=3, help="first correctly classified images per dataset")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--baseline", default="7c5b386", help="git revision to compare with")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workers = {"baseline": Worker(extract(args.baseline, Path(tmp))), "this": Worker(ROOT)}
        totals = {name: [0, 0.0] for name in workers}
        print(f"{'dataset':<8}{'eps':>4}{'image':>6}  {'baseline it/s':>14}  {'this it/s':>10}")
        try:
            for job in jobs(args.arch, args.images, args.seconds):
                rates = {}
                for name, worker in workers.items():
                    r = worker.run(job)
                    totals[name][0] += r["iterations"]
                    totals[name][1] += r["time"]
                    rates[name] = r["iterations"] / max(r["time"], 1e-9)
                print(f"{job['dataset']:<8}{job['eps']:>4}{job['image']:>6}  {rates['baseline']:>14.1f}  "
                      f"{rates['this']:>10.1f}", flush=True)
        finally:
            for worker in workers.values():
                worker.close()
    base, this = (totals[n][0] / max(totals[n][1], 1e-9) for n in ("baseline", "this"))
    print(f"{args.arch}: baseline {args.baseline} {base:.1f} it/s, this checkout {this:.1f} it/s, "
          f"ratio {this / base:.1f} (issue 12 target: >= 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
