"""Data-parallel training on one machine: 1 rank × 2 threads vs 2 ranks × 1 thread.

A third run, 1 rank × 1 thread, is the scaling baseline. All fit the same model (``small``
preset, 32 × 32 × 8 windows of synthetic precipitation) with the same global batch and
seed; the 2-rank run is started with ``torchrun`` (``python -m torch.distributed.run
--standalone``, gloo). Reports training samples per second of each (the ratio; target
≥ 1.6× on a 2-core machine) and the loss curves side by side (equal up to reduction
order: the ranks draw exactly the single process's batch, t and ε).

Prints one JSON document. ``--quick``: fewer steps. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from xdiffusion.datasets import synthetic_precipitation

GRID, FRAMES, GLOBAL_BATCH = 32, 8, 8

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import xarray as xr
    import xdiffusion as xd
    from xdiffusion.parallel import is_main_process, world_size

    data, steps, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    model = xd.fit(xr.open_dataset(data)["pr"], frames=FRAMES, steps=steps, batch_size=batch,
                   seed=0, device="cpu", progress=False, val_fraction=0.0)
    if is_main_process():
        t = model.config["training"]
        print("RESULT", json.dumps({"world_size": world_size(), "seconds": t["seconds"],
                                    "loss": t["history"]["loss"]}))
    """
).replace("FRAMES", str(FRAMES))


def _run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.split("RESULT", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 100)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = tmp / "data.nc"
        synthetic_precipitation(nt=600, ny=GRID, nx=GRID, seed=0).to_dataset().to_netcdf(data)
        script = tmp / "fit.py"
        script.write_text(SCRIPT)
        one = _run([sys.executable, str(script), str(data), str(steps), str(GLOBAL_BATCH), "2"], 2)
        single = _run(
            [sys.executable, str(script), str(data), str(steps), str(GLOBAL_BATCH), "1"], 1
        )
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        two = _run(
            [*torchrun, "--nproc_per_node=2", str(script), str(data), str(steps),
             str(GLOBAL_BATCH // 2), "1"],
            1,
        )  # fmt: skip
    runs = (("one", one), ("two", two), ("single", single))
    rate = {k: GLOBAL_BATCH * steps / r["seconds"] for k, r in runs}
    loss_one, loss_two = np.asarray(one["loss"]), np.asarray(two["loss"])
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "grid": GRID, "frames": FRAMES, "global_batch": GLOBAL_BATCH, "steps": steps,
            "preset": "small", "backend": "gloo",
            "one_rank": "1 process × 2 torch threads, batch 8",
            "two_ranks": "2 processes × 1 torch thread, batch 4 each",
        },
        "samples_per_second": {
            "one_rank_two_threads": round(rate["one"], 2),
            "two_ranks_one_thread": round(rate["two"], 2),
            "one_rank_one_thread": round(rate["single"], 2),
        },
        "speedup_two_ranks_over_one": round(rate["two"] / rate["one"], 3),
        "speedup_two_ranks_over_one_rank_one_thread": round(rate["two"] / rate["single"], 3),
        "loss": {
            "one_rank": [round(v, 5) for v in loss_one.tolist()],
            "two_ranks": [round(v, 5) for v in loss_two.tolist()],
            "max_abs_difference": float(np.max(np.abs(loss_one - loss_two))),
        },
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
