"""Training-window throughput and memory from a zarr archive on disk, per loader.

Writes a synthetic float32 (time, y, x) zarr store chunked along time (``--chunk`` steps per
chunk, the whole grid in each), then, each in a fresh process so that peak RSS is its own:

- ``chunked``: :class:`xdiffusion.io.streaming.ChunkedWindows` (shuffle buffer of whole
  chunks, background prefetch), also on the first half of the archive (``chunked_half``)
  to show that memory does not grow with the archive's length;
- ``naive``: :class:`xdiffusion.io.streaming.RandomWindows` (each window read on its own
  with :class:`~xdiffusion.io.windows.WindowReader`: what ``fit`` did before);
- ``xbatcher``: ``xbatcher.BatchGenerator(da, input_dims={"time": frames, "y": Y, "x": X},
  input_overlap={"time": frames - 1})`` — one generator item per window start, i.e. every
  sliding window, indexed at random (``bg[i]``) to form shuffled batches like ours;
- ``xbatcher_slab``: the same with ``batch_dims={"time": chunk}`` and
  ``concat_input_dims=True`` on the Dataset — each item is every window starting in one
  chunk-sized slab, drawn in random slab order: few, large batches, not shuffled within.

The chunked runs are repeated with ``MALLOC_MMAP_THRESHOLD_=1048576``: glibc otherwise
raises its mmap threshold after the first freed chunk-sized buffer and keeps later ones in
its heaps, so peak RSS creeps up with the number of rounds read (not with the archive's
length) well above the live size.

Each loader is timed for ``--seconds`` (windows per second, including its set-up's first
read). Then the share of a training step spent waiting for data: real steps of the
``small`` preset on CPU (``--train-batch``; rounds forced short with ``--train-spr`` so the
prefetch is exercised while the CPU is busy), and steps of a fixed ``--gpu-step`` seconds
emulating a GPU-bound loop (the host thread idles while the GPU computes). The store is
deleted at the end. Prints one JSON document; progress goes to stderr.

Usage::

    python benchmarks/data.py [--quick] [--size-mb 4096] [--dir /tmp]

Needs ``pip install xbatcher`` (pure Python) and zarr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VAR = "pr"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_store(path: Path, n_time: int, grid: int, chunk: int) -> float:
    """Write synthetic rain-like data chunk by chunk; returns seconds taken."""
    import dask.array as dsa
    import pandas as pd
    import xarray as xr

    def block(block_info=None):
        (t0, t1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        rng = np.random.default_rng(t0)
        z = rng.standard_normal((t1 - t0, y1 - y0, x1 - x0), dtype=np.float32)
        return np.maximum(z, 0) ** 2  # non-negative, many zeros: precipitation-like

    chunks = ((chunk,) * (n_time // chunk), (grid,), (grid,))
    data = dsa.map_blocks(block, chunks=chunks, dtype=np.float32)
    time_ = pd.date_range("2000-01-01", periods=n_time, freq="h")
    ds = xr.Dataset(
        {VAR: (("time", "y", "x"), data, {"units": "mm h-1"})},
        coords={"time": time_, "y": np.arange(grid), "x": np.arange(grid)},
    )
    t0 = time.perf_counter()
    ds.to_zarr(path, mode="w", consolidated=True)
    return time.perf_counter() - t0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- workers (run in fresh processes) ----------------------------------------------------


def _open(spec: dict):
    import xarray as xr

    da = xr.open_zarr(spec["store"], consolidated=True)[VAR]
    frac = spec.get("fraction", 1.0)
    if frac < 1.0:
        da = da.isel(time=slice(0, int(da.sizes["time"] * frac)))
    return da


def _make_loader(spec: dict, da):
    """``get(step) -> (B, C, frames, Y, X)`` for the loader ``spec['kind']``."""
    from xdiffusion.io.convert import prepare
    from xdiffusion.io.streaming import ChunkedWindows, RandomWindows
    from xdiffusion.io.windows import window_starts

    kind, frames, bs, seed = spec["kind"], spec["frames"], spec["batch"], spec.get("seed", 0)
    if kind in ("chunked", "chunked_half", "naive"):
        p = prepare(da)
        starts = window_starts(p.time, frames)
        if kind == "naive":
            loader = RandomWindows(p.data, frames, starts, batch_size=bs, seed=seed)
        else:
            loader = ChunkedWindows(
                p.data,
                frames,
                starts,
                batch_size=bs,
                seed=seed,
                buffer_chunks=spec["buffer_chunks"],
                steps_per_round=spec.get("steps_per_round"),
                total_steps=spec.get("total_steps"),
            )
        return (lambda step: loader.batch(step)[1]), loader

    import xbatcher

    dims = {"time": frames, "y": da.sizes["y"], "x": da.sizes["x"]}
    if kind == "xbatcher":
        bg = xbatcher.BatchGenerator(da, input_dims=dims, input_overlap={"time": frames - 1})
        n = len(bg)

        def get(step: int) -> np.ndarray:
            idx = np.random.default_rng([seed, step]).integers(n, size=bs)
            return np.stack([bg[int(i)].values for i in idx])[:, None]

        return get, bg
    if kind == "xbatcher_slab":
        bg = xbatcher.BatchGenerator(
            da.to_dataset(),  # with a DataArray, xbatcher 0.4's concat path fails on dask
            input_dims=dims,
            input_overlap={"time": frames - 1},
            batch_dims={"time": spec["chunk"]},
            concat_input_dims=True,
        )
        n = len(bg)

        def get(step: int) -> np.ndarray:
            item = bg[int(np.random.default_rng([seed, step]).integers(n))]
            return item[VAR].transpose("input_batch", "time_input", ...).values[:, None]

        return get, bg
    raise ValueError(f"unknown loader kind {kind!r}")


def worker_throughput(spec: dict) -> dict:
    import xdiffusion  # noqa: F401  (same imports, hence a comparable baseline, everywhere)

    base = peak_rss_mb()
    t0 = time.perf_counter()
    da = _open(spec)
    get, _ = _make_loader(spec, da)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    windows, steps, first = 0, 0, None
    shape = None
    while True:
        x = get(steps)
        shape = x.shape
        windows += x.shape[0]
        steps += 1
        now = time.perf_counter() - t0
        if first is None:
            first, w_first = now, windows
        if now >= spec["seconds"] and steps >= spec.get("min_batches", 2):
            break
    return {
        "kind": spec["kind"],
        "time_steps": int(da.sizes["time"]),
        "archive_mb": round(da.nbytes / 2**20, 1),
        "batch_shape": list(shape),
        "setup_s": round(setup, 3),
        "first_batch_s": round(first, 3),
        "batches": steps,
        "seconds": round(now, 2),
        "windows_per_s": round(windows / now, 1),
        "windows_per_s_after_first": round((windows - w_first) / max(now - first, 1e-9), 1),
        "rss_baseline_mb": round(base, 1),
        "rss_peak_mb": round(peak_rss_mb(), 1),
        "rss_added_mb": round(peak_rss_mb() - base, 1),
    }


def worker_train(spec: dict) -> dict:
    import torch

    from xdiffusion.core.diffusion import v_loss
    from xdiffusion.core.schedule import CosineSchedule
    from xdiffusion.nets import UNet3D, unet_config

    da = _open(spec)
    get, loader = _make_loader(spec, da)
    step_s = spec.get("gpu_step")
    if step_s is None:
        torch.manual_seed(0)
        net = UNet3D(unet_config("small", channels=1))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
        schedule = CosineSchedule(-30.0, 30.0)
    waits, totals = [], []
    for step in range(spec["steps"]):
        t0 = time.perf_counter()
        x = torch.from_numpy(get(step))
        t1 = time.perf_counter()
        if step_s is None:
            loss = v_loss(net, torch.sqrt(x) - 0.5, schedule).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            time.sleep(step_s)  # a GPU step: the host thread waits, the CPU is free
        waits.append(t1 - t0)
        totals.append(time.perf_counter() - t0)
    if hasattr(loader, "close"):
        loader.close()
    w, tot = np.array(waits[1:]), np.array(totals[1:])  # step 0 includes the first read
    return {
        "kind": spec["kind"],
        "step": "cpu small preset" if step_s is None else f"emulated {step_s} s",
        "batch": spec["batch"],
        "steps": spec["steps"],
        "steps_per_round": getattr(loader, "steps_per_round", None),
        "first_step_wait_s": round(waits[0], 3),
        "mean_step_s": round(float(tot.mean()), 4),
        "mean_wait_s": round(float(w.mean()), 4),
        "max_wait_s": round(float(w.max()), 4),
        "wait_share": round(float(w.sum() / tot.sum()), 4),
    }


def run_worker(mode: str, spec: dict, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", mode, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode:
        raise RuntimeError(f"worker {spec['kind']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~100 MB store, short timings")
    ap.add_argument("--size-mb", type=float, default=None, help="archive size (default 4096)")
    ap.add_argument("--dir", default=None, help="parent folder of the temporary store")
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=500, help="time steps per zarr chunk")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--buffer-chunks", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=None, help="timing per loader")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--train-spr", type=int, default=2, help="steps per round, CPU training")
    ap.add_argument("--gpu-step", type=float, default=0.05, help="emulated GPU step (s)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, spec = args.worker[0], json.loads(args.worker[1])
        out = worker_throughput(spec) if mode == "throughput" else worker_train(spec)
        print(json.dumps(out))
        return

    size_mb = args.size_mb or (100.0 if args.quick else 4096.0)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    train_steps = args.train_steps or (3 if args.quick else 5)
    notes = []
    parent = Path(args.dir or tempfile.gettempdir())
    free_mb = shutil.disk_usage(parent).free / 2**20
    if free_mb < 3 * size_mb:
        notes.append(f"only {free_mb:.0f} MiB free: archive scaled down from {size_mb:.0f} MiB")
        size_mb = free_mb / 3
    step_mb = args.grid * args.grid * 4 / 2**20
    n_time = max(2, int(size_mb / step_mb) // args.chunk) * args.chunk
    tmp = Path(tempfile.mkdtemp(prefix="xdiffusion-bench-", dir=parent))
    store = tmp / "archive.zarr"
    results: dict = {
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "settings": {
            "grid": [args.grid, args.grid],
            "chunk": [args.chunk, args.grid, args.grid],
            "frames": args.frames,
            "batch": args.batch,
            "buffer_chunks": args.buffer_chunks,
            "time_steps": n_time,
            "archive_mib": round(n_time * step_mb, 1),
        },
        "notes": notes,
    }
    try:
        log(f"writing {n_time * step_mb:.0f} MiB ({n_time} steps) to {store}")
        results["write_s"] = round(write_store(store, n_time, args.grid, args.chunk), 1)
        results["store_mib_on_disk"] = round(dir_bytes(store) / 2**20, 1)
        base = dict(
            store=str(store),
            frames=args.frames,
            batch=args.batch,
            buffer_chunks=args.buffer_chunks,
            seconds=seconds,
            chunk=args.chunk,
        )
        tput = []
        fixed = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
        for kind, extra, env in (
            ("chunked", {}, None),
            ("chunked_half", {"fraction": 0.5}, None),
            ("chunked", {}, fixed),
            ("chunked_half", {"fraction": 0.5}, fixed),
            ("chunked", {"buffer_chunks": 2 * args.buffer_chunks}, fixed),
            ("naive", {}, None),
            ("xbatcher", {}, None),
            ("xbatcher_slab", {}, None),
        ):
            log(f"throughput: {kind} {extra} {env or ''}")
            out = run_worker("throughput", {**base, "kind": kind, **extra}, env)
            tput.append(
                {
                    **out,
                    "buffer_chunks": extra.get("buffer_chunks", args.buffer_chunks),
                    "env": env or {},
                }
            )
            log(f"  {tput[-1]}")
        results["throughput"] = tput
        train = []
        for kind in ("chunked", "naive"):
            spec = {**base, "kind": kind, "batch": args.train_batch, "steps": train_steps}
            if kind == "chunked":
                spec["steps_per_round"] = args.train_spr
            log(f"training wait share: {kind}, cpu")
            train.append(run_worker("train", spec))
            log(f"  {train[-1]}")
        n_gpu = max(40, int(3 * args.buffer_chunks * args.chunk / args.batch))
        for kind in ("chunked", "naive"):
            spec = {**base, "kind": kind, "steps": n_gpu, "gpu_step": args.gpu_step}
            spec["total_steps"] = n_gpu
            if kind == "naive":
                spec["steps"] = 40
            log(f"training wait share: {kind}, emulated GPU step")
            train.append(run_worker("train", spec))
            log(f"  {train[-1]}")
        results["training"] = train
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["store_deleted"] = not store.exists()
    print(json.dumps(results, indent=1))


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
