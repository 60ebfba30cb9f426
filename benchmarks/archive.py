"""Archive-scale downscaling: memory flat in the archive length, throughput per worker.

Downscales a synthetic coarse archive (4× coarser than a 32 × 32 model grid) with n=4
members to a zarr store through ``xdiffusion downscale --chunks … --out x.zarr`` (lazy
input, region-by-region writes), each run in a fresh process:

- peak RSS (``VmHWM`` of the job's process) at two archive lengths 8× apart with the
  threaded scheduler (the figure must not grow with the length);
- wall time per generated fine field, and throughput with a LocalCluster of 1 vs 2 worker
  processes with one torch thread each (ratio; target ≥ 1.6× on a 2-core machine);
- same values: eager numpy vs two chunkings vs 2 worker processes, on a short archive.

Prints one JSON document. ``--quick``: shorter archives. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation

GRID, FACTOR, FRAMES, MEMBERS, BATCH = 32, 4, 8, 4, 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model(tmp: Path) -> Path:
    data = synthetic_precipitation(nt=400, ny=GRID, nx=GRID, seed=0)
    model = data.diffusion.fit(
        frames=FRAMES, steps=30, batch_size=4, progress=False, device="cpu", seed=0
    )
    model.save(tmp / "model")
    return tmp / "model"


def _coarse(tmp: Path, nt: int) -> Path:
    fine = synthetic_precipitation(nt=nt, ny=GRID, nx=GRID, seed=1)
    coarse = fine.coarsen(x=FACTOR, y=FACTOR).mean().astype("float32")
    path = tmp / f"coarse-{nt}.zarr"
    coarse.to_dataset().chunk(time=64).to_zarr(path, mode="w")
    return path


def _run(model: Path, coarse: Path, out: Path, scheduler: str, steps: int, chunks: int) -> dict:
    """One CLI job in a fresh process: wall time (its workers' memory is not measured)."""
    cmd = [
        sys.executable, "-m", "xdiffusion.cli", "downscale", str(model), str(coarse),
        "--factor", str(FACTOR), "--n", str(MEMBERS), "--chunks", str(chunks),
        "--steps", str(steps), "--quiet", "--device", "cpu", "--scheduler", scheduler,
        "--batch-size", str(BATCH), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return {"seconds": round(time.perf_counter() - t, 2)}


def _peak_rss(model: Path, coarse: Path, out: Path, steps: int) -> dict:
    """Peak RSS of a threaded-scheduler job, read in its own process.

    ``VmHWM`` from ``/proc/self/status`` is reset at exec, unlike ``ru_maxrss`` of
    ``RUSAGE_SELF``, which Linux carries over from the parent (the benchmark process, which
    fitted the model) and which made an earlier run report the parent's peak for both lengths.
    """
    code = (
        "import sys\n"
        "from xdiffusion.cli import main\n"
        "try:\n    main(sys.argv[2:])\nfinally:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    print('PEAK', int(hwm.split()[1]) * 1024)"
    )
    cmd = [
        sys.executable, "-c", code, "xdiffusion", "downscale", str(model), str(coarse),
        "--factor", str(FACTOR), "--n", str(MEMBERS), "--chunks", "64", "--steps", str(steps),
        "--quiet", "--device", "cpu", "--scheduler", "threads", "--batch-size", str(BATCH),
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    res = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = int(res.stdout.split("PEAK")[-1].strip())
    return {"seconds": round(wall, 2), "peak_rss_bytes": peak}


def _same_values(model_path: Path, steps: int) -> dict:
    from distributed import Client, LocalCluster

    model = xd.load(model_path)
    fine = synthetic_precipitation(nt=40, ny=GRID, nx=GRID, seed=2)
    coarse = fine.coarsen(x=FACTOR, y=FACTOR).mean()
    kw = {"factor": FACTOR, "n": 3, "steps": steps, "seed": 3, "progress": False}
    eager = coarse.diffusion.downscale(model, **kw).values
    a = coarse.chunk(time=8).diffusion.downscale(model, **kw).values
    b = coarse.chunk(time=24).diffusion.downscale(model, batch_size=1, **kw).values
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        c = coarse.chunk(time=16).diffusion.downscale(model, **kw).values
    return {
        "eager_vs_chunks_8": bool(np.array_equal(eager, a)),
        "eager_vs_chunks_24_batch_1": bool(np.array_equal(eager, b)),
        "eager_vs_localcluster_2_processes": bool(np.array_equal(eager, c)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps (throughput)")
    parser.add_argument(
        "--memory-steps", type=int, default=4, help="sampler steps of the memory runs"
    )
    args = parser.parse_args()
    # Memory: two lengths 8x apart. Throughput: enough time chunks (regions) that two
    # workers both have work until near the end (>= 8 regions x member blocks).
    short, long_ = (64, 512) if args.quick else (256, 2048)
    thr_nt, thr_chunk = (256, 32) if args.quick else (1024, 64)
    torch.set_num_threads(1)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {
            "grid": GRID, "factor": FACTOR, "frames": FRAMES, "members": MEMBERS,
            "batch_size": BATCH, "torch_threads_per_worker": 1,
            "memory": {"lengths": [short, long_], "time_chunk": 64,
                       "sampler_steps": args.memory_steps, "scheduler": "threads"},
            "throughput": {"length": thr_nt, "time_chunk": thr_chunk,
                           "sampler_steps": args.steps, "scheduler": "local:N"},
        },
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _log("fitting a small model")
        model = _model(tmp)
        paths = {nt: _coarse(tmp, nt) for nt in sorted({short, long_, thr_nt})}
        mem = {}
        for nt in (short, long_):
            _log(f"peak RSS, {nt} steps")
            r = _peak_rss(model, paths[nt], tmp / f"mem-{nt}.zarr", args.memory_steps)
            r["seconds_per_field"] = round(r["seconds"] / (nt * MEMBERS), 4)
            mem[str(nt)] = r
        result["memory"] = mem
        result["memory"]["peak_ratio_long_over_short"] = round(
            mem[str(long_)]["peak_rss_bytes"] / mem[str(short)]["peak_rss_bytes"], 3
        )
        thr = {}
        for workers in (1, 2):
            _log(f"throughput, local:{workers}")
            out = tmp / f"w{workers}.zarr"
            r = _run(model, paths[thr_nt], out, f"local:{workers}", args.steps, thr_chunk)
            r["fields_per_second"] = round(thr_nt * MEMBERS / r["seconds"], 2)
            r["seconds_per_field"] = round(r["seconds"] / (thr_nt * MEMBERS), 4)
            thr[f"workers_{workers}"] = r
        thr["speedup_2_over_1"] = round(
            thr["workers_2"]["fields_per_second"] / thr["workers_1"]["fields_per_second"], 3
        )
        a = xr.open_zarr(tmp / "w1.zarr").pr.values
        b = xr.open_zarr(tmp / "w2.zarr").pr.values
        thr["same_values_1_vs_2_workers"] = bool(np.array_equal(a, b))
        result["throughput"] = thr
        _log("same values across chunkings and schedulers")
        result["same_values"] = _same_values(model, args.steps)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
