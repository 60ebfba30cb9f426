"""Retrain the shipped reference model ``synthetic-precip`` bit for bit.

    OMP_NUM_THREADS=1 python scripts/train_reference.py [--out DIR]

The recipe is ``xdiffusion.pretrained.RECIPES["synthetic-precip"]``: the ``small``
architecture at width 16 on 16 × 16 × 8 windows of the package's synthetic precipitation
(25 km cells, rain moving 2 cells per hour, 60 % dry: the setting of
``benchmarks/conditional.py``, where such a model beats climatology, persistence, linear
interpolation and bicubic), ``transform="sqrt"``, 5000 steps of batch 8 on 6000 hourly
steps of training data (seed 0). Same seed, one torch thread, a CPU: the same
weights. Writes the model directory (EMA weights only: the raw weights are for resuming
training, not for generating) and ``training.json`` (command, steps, wall time, data
settings, machine), and prints the SHA-256 of the files for ``xdiffusion/pretrained.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.pretrained import RECIPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="xdiffusion/pretrained/synthetic-precip")
    parser.add_argument("--steps", type=int, default=None, help="override (not the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = json.loads(json.dumps(RECIPES["synthetic-precip"]))
    if args.steps is not None:
        recipe["fit"]["steps"] = args.steps
    d = recipe["data"]
    data = synthetic_precipitation(
        nt=d["nt"], ny=d["ny"], nx=d["nx"], seed=d["seed"], dx_km=d["dx_km"],
        wind_kmh=tuple(d["wind_kmh"]), dry_fraction=d["dry_fraction"],
    )  # fmt: skip
    t = time.perf_counter()
    model = data.diffusion.fit(device="cpu", progress=True, **recipe["fit"])
    seconds = time.perf_counter() - t
    model.raw_module = None  # generation needs the EMA weights only
    out = Path(args.out)
    model.save(out, overwrite=True)
    info = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "recipe": recipe,
        "wall_seconds": round(seconds, 1),
        "torch_threads": 1,
        "final_loss": model.config["training"]["history"]["loss"][-1],
        "final_val_loss": (model.config["training"]["history"].get("val_loss") or [None])[-1],
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
        },
    }  # fmt: skip
    (out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    for name in sorted(p.name for p in out.iterdir()):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        print(f"{name} {digest}")


if __name__ == "__main__":
    main()
