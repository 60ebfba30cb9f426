"""Patch training vs whole-grid training at equal wall time (issue 16).

On a synthetic precipitation archive (:func:`xdiffusion.datasets.synthetic_precipitation`)
of 128×128 cells (``--quick``: 64×64), the same network is trained twice for the same
wall time: on the whole grid, and on random 32×32 crops (``fit(patch=32)``). Both models
then sample the *whole* grid, and the samples are scored against held-out data of
another seed, cut into windows:

- ``spatial_psd_log_error``: mean |log10| ratio of the radially averaged spatial power
  spectra (:func:`xdiffusion.diagnostics.spatial_psd`);
- ``qq_relative_error``: mean |relative error| of the quantiles
  (:func:`xdiffusion.diagnostics.qq`, Herbert (2023)'s quantile set);
- ``temporal_psd_log_error`` and ``mean_abs_normalised_bias`` alongside
  (``benchmarks/_common.py::quality``);
- ``sample_peak_rss_mib``: peak resident memory added by sampling the whole grid, measured
  in a fresh process after loading the model (CPU; on CUDA the peak allocated memory).

Equal wall time: each run's seconds per step are measured on a short calibration fit,
and the step counts are set so that both fits last about ``--seconds``; the recorded
training seconds are reported.

Prints one JSON document to stdout; progress goes to stderr.

Usage::

    python benchmarks/patches.py            # 128×128, 2 × 10 min of training
    python benchmarks/patches.py --quick    # 64×64, 2 × 40 s, a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as C

#: Crop size of the patch run.
PATCH = 32
#: Steps of the calibration fits that measure each run's seconds per step.
CALIBRATION_STEPS = 6
#: Settings of the two sizes: grid, frames, network, archive lengths, wall time per fit,
#: ensemble members and sampler steps.
SETTINGS = {
    "full": dict(
        grid=128,
        frames=8,
        net={"width": 16, "head_dim": 16},
        nt_train=3000,
        nt_held_out=800,
        seconds=600.0,
        members=8,
        sampling_steps=20,
        batch_size=8,
    ),
    "quick": dict(
        grid=64,
        frames=4,
        net={"width": 8, "head_dim": 8, "mults": [1, 2]},
        nt_train=600,
        nt_held_out=200,
        seconds=40.0,
        members=4,
        sampling_steps=10,
        batch_size=4,
    ),
}


def _fit(data, s: dict, steps: int, patch: int | None) -> xd.DiffusionModel:
    return data.diffusion.fit(
        frames=s["frames"],
        transform="sqrt",
        steps=steps,
        batch_size=s["batch_size"],
        lr=1e-3,
        warmup=min(50, steps),
        seed=0,
        device="auto",
        net=s["net"],
        progress=False,
        patch=patch,
        val_every=0,
    )


def _seconds_per_step(data, s: dict, patch: int | None) -> float:
    # two calibration fits: the difference removes the set-up (statistics pass, net init)
    t = []
    for steps in (1, 1 + CALIBRATION_STEPS):
        t0 = time.perf_counter()
        _fit(data, s, steps, patch)
        t.append(time.perf_counter() - t0)
    return max((t[1] - t[0]) / CALIBRATION_STEPS, 1e-3)


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _sample_memory(model_dir: str, template_path: str, n: int, steps: int, queue) -> None:
    """In a fresh process: peak memory that sampling the whole grid adds to the loaded model.

    The peak resident set (``VmHWM``) is reset just before sampling, so the import, load
    and template peaks do not hide it; without ``/proc`` the ``ru_maxrss`` difference is a
    lower bound.
    """
    import xarray as xr

    model = xd.load(model_dir, device="auto")
    template = xr.open_dataarray(template_path).load()
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    exact = _reset_peak_rss()
    before = C.status_kib("VmRSS") if exact else None
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    model.sample(template, n=n, steps=steps, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    peak = C.status_kib("VmHWM") if exact else None
    if peak is not None and before is not None:
        added, how = peak - before, "VmHWM reset before sampling"
    else:
        added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max
        how = "ru_maxrss difference (a lower bound)"
    out = {"sample_seconds": seconds, "sample_peak_rss_mib": added / 1024, "rss_method": how}
    if cuda:
        out["sample_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    queue.put(out)


def _memory(model: xd.DiffusionModel, template, n: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        path = str(Path(tmp) / "template.nc")
        template.to_netcdf(path)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_sample_memory, args=(str(Path(tmp) / "model"), path, n, steps, queue)
        )
        proc.start()
        result = queue.get()
        proc.join()
    return result


def run(quick: bool, seconds: float | None) -> dict:
    s = dict(SETTINGS["quick" if quick else "full"])
    if seconds is not None:
        s["seconds"] = float(seconds)
    g = s["grid"]
    C.log(f"data: {g}×{g}, {s['nt_train']} training and {s['nt_held_out']} held-out steps")
    train = synthetic_precipitation(nt=s["nt_train"], ny=g, nx=g, seed=0)
    held_out = synthetic_precipitation(nt=s["nt_held_out"], ny=g, nx=g, seed=1)
    template = held_out.isel(time=slice(0, s["frames"]))
    count = s["nt_held_out"] // s["frames"]
    reference = C.ensemble(C.windows(held_out, s["frames"], count), template)
    results: dict = {}
    for name, patch in (("whole_grid", None), (f"patch_{PATCH}", PATCH)):
        per_step = _seconds_per_step(train, s, patch)
        steps = max(CALIBRATION_STEPS, int(s["seconds"] / per_step))
        C.log(f"{name}: {per_step:.3f} s/step → {steps} steps for {s['seconds']:.0f} s")
        model = _fit(train, s, steps, patch)
        C.log(f"{name}: sampling the whole grid, {s['members']} members")
        samples = model.sample(
            template, n=s["members"], steps=s["sampling_steps"], seed=1, progress=False
        )
        loss = model.history_dict.get("loss", [])
        results[name] = {
            "patch": patch,
            "steps": steps,
            "seconds_per_step": per_step,
            "train_seconds": model.config["training"]["seconds"],
            "final_loss_mean_last_50": float(np.mean(loss[-50:])) if loss else None,
            **C.quality(samples, reference),
            **_memory(model, template, s["members"], s["sampling_steps"]),
        }
    return {
        "benchmark": "patches",
        "quick": quick,
        "settings": {**s, "patch": PATCH, "calibration_steps": CALIBRATION_STEPS},
        "results": results,
        "machine": C.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64×64, short fits")
    parser.add_argument("--seconds", type=float, default=None, help="wall time of each fit")
    args = parser.parse_args(argv)
    print(json.dumps(C.rounded(run(args.quick, args.seconds)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
