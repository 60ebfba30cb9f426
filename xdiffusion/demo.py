"""``xdiffusion demo``: the main job end to end on synthetic precipitation.

Generates data, fits a small model, samples an ensemble, fills gaps, forecasts, downscales,
evaluates, and writes netCDF files, PNG figures and the model to one folder.

The torch thread count is chosen from the cores free when the demo starts (see
:func:`choose_threads`): on a busy machine, one torch thread per core taken by another
process halves throughput or worse, so the demo stays fast by not competing for them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from xdiffusion.io.cf import to_dataset

__all__ = ["choose_threads", "run_demo"]


def _nc(obj: xr.DataArray | xr.Dataset, path: Path) -> str:
    to_dataset(obj).to_netcdf(path)
    return path.name


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return max(1, os.cpu_count() or 1)


def choose_threads(threads: int | str | None = "auto") -> tuple[int, str]:
    """The torch thread count for the demo and why it was chosen.

    Parameters
    ----------
    threads
        A number ≥ 1: that many. ``"auto"``: ``OMP_NUM_THREADS`` if it is set (the user's
        explicit choice), else the cores free now: the usable cores (CPU affinity) minus
        the rounded 1-minute load average, at least 1. ``None``: torch's current setting
        (e.g. one made with ``torch.set_num_threads``), left as it is.

    Returns
    -------
    (int, str)
        The count and a short description of its source.
    """
    import torch

    if threads is None:
        return torch.get_num_threads(), "torch.get_num_threads()"
    if isinstance(threads, str):
        if threads.strip().lower() != "auto":
            raise ValueError(f"threads must be 'auto', None or a number ≥ 1, got {threads!r}")
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            return int(env), "OMP_NUM_THREADS"
        cores = _usable_cores()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return cores, f"{cores} usable cores (load unknown)"
        free = max(1, min(cores, cores - round(load)))
        return free, f"free cores: {cores} usable, 1-minute load {load:.2f}"
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise ValueError(f"threads must be 'auto', None or a number ≥ 1, got {threads!r}")
    return int(threads), "threads= (--threads)"


def run_demo(
    out: str | Path = "xdiffusion-demo",
    *,
    steps: int | None = None,
    size: int = 32,
    frames: int = 8,
    members: int = 4,
    tiny: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    threads: int | str | None = "auto",
) -> dict:
    """Run the demo and return a summary dict (also written as ``summary.json``).

    Parameters
    ----------
    out
        Output folder (created).
    steps
        Training steps (default 300, or 30 with ``tiny``).
    size, frames, members
        Grid size, window length and ensemble size.
    tiny
        A seconds-long smoke run (tests): few steps, few members, a small network.
    threads
        Torch threads while the demo runs (restored afterwards): a number, ``"auto"``
        (the cores free now, or ``OMP_NUM_THREADS`` if set) or ``None`` (torch's current
        setting); see :func:`choose_threads`. The count used is ``summary["threads"]``.
    """
    import torch

    n_threads, source = choose_threads(threads)
    previous = torch.get_num_threads()
    if progress:
        print(f"xdiffusion demo: {n_threads} torch thread(s) ({source})")
    torch.set_num_threads(n_threads)
    try:
        return _run(
            out,
            steps=steps,
            size=size,
            frames=frames,
            members=members,
            tiny=tiny,
            seed=seed,
            device=device,
            progress=progress,
            threads={"threads": n_threads, "threads_source": source},
        )
    finally:
        torch.set_num_threads(previous)


def _run(
    out: str | Path,
    *,
    steps: int | None,
    size: int,
    frames: int,
    members: int,
    tiny: bool,
    seed: int,
    device: str,
    progress: bool,
    threads: dict,
) -> dict:
    import json

    import xdiffusion  # noqa: F401  (registers .diffusion)
    from xdiffusion import diagnostics
    from xdiffusion.datasets import synthetic_precipitation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    nt = 600 if tiny else 4000
    data = synthetic_precipitation(nt=nt, ny=size, nx=size, seed=seed)
    n_train = int(nt * 0.8)
    train, test = data.isel(time=slice(0, n_train)), data.isel(time=slice(n_train, None))
    files = [_nc(data.isel(time=slice(0, 200)), out / "data_sample.nc")]
    steps = steps if steps is not None else (30 if tiny else 300)
    net = {"width": 8, "mults": [1, 2]} if tiny else None
    sampling_steps = 4 if tiny else 20
    members = 2 if tiny else members

    t = time.perf_counter()
    model = train.diffusion.fit(
        frames=frames,
        steps=steps,
        batch_size=8,
        lr=1e-3,
        warmup=50,
        transform="sqrt",
        seed=seed,
        device=device,
        progress=progress,
        net=net,
    )
    fit_s = time.perf_counter() - t
    model.save(out / "model")
    summary: dict = {
        **threads,
        "fit_seconds": round(fit_s, 1),
        "model": repr(model),
        "final_loss": float(np.mean(model.history["loss"][-50:])),
    }
    if model.history.get("val_loss"):
        summary["val_loss"] = model.history["val_loss"][-1]
    gen = {"steps": sampling_steps, "seed": seed + 1, "progress": progress}

    t = time.perf_counter()
    template = test.isel(time=slice(0, frames + frames // 2))
    ens = template.diffusion.sample(model, members, **gen)
    summary["sample_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(ens, out / "ensemble.nc"))

    gappy = test.isel(time=slice(2 * frames, 4 * frames)).copy()
    truth_gaps = gappy.copy()
    gap = np.zeros(gappy.sizes["time"], dtype=bool)
    gap[2:4] = gap[8:11] = True
    gappy[{"time": np.flatnonzero(gap)}] = np.nan
    t = time.perf_counter()
    filled = gappy.diffusion.interpolate(model, max(2, members // 2), **gen)
    summary["interpolate_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(filled, out / "interpolated.nc"))
    lin = gappy.interpolate_na("time")
    err = lambda a: float(np.sqrt(((a - truth_gaps).isel(time=gap) ** 2).mean()))  # noqa: E731
    summary["interpolation_rmse"] = {
        "diffusion_mean": err(filled.mean("realization")),
        "linear": err(lin),
    }

    hist = test.isel(time=slice(0, 4 * frames))
    lead = frames // 2
    t = time.perf_counter()
    fc = hist.diffusion.forecast(model, lead, members, **gen)
    summary["forecast_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(fc, out / "forecast.nc"))
    obs = test.isel(time=slice(4 * frames, 4 * frames + lead))
    crps = diagnostics.crps(fc, obs.assign_coords(time=fc.time), fair=True)
    summary["forecast_crps_mean"] = float(crps.mean())

    factor = 4 if size % 4 == 0 else 2
    fine = test.isel(time=slice(0, frames))
    coarse = fine.coarsen({fine.dims[1]: factor, fine.dims[2]: factor}).mean()
    t = time.perf_counter()
    down = coarse.diffusion.downscale(model, max(2, members // 2), factor=factor, **gen)
    summary["downscale_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(down, out / "downscaled.nc"))
    recoarse = down.coarsen({fine.dims[1]: factor, fine.dims[2]: factor}).mean()
    summary["downscale_max_block_error"] = float(abs(recoarse - coarse.values).max())

    reference = test.isel(time=slice(0, 2 * frames * 8))
    report = ens.diffusion.evaluate(reference)
    files.append(_nc(report, out / "report.nc"))
    summary["evaluation"] = {k: float(report[k]) for k in report.data_vars if report[k].ndim == 0}
    try:
        from xdiffusion import plot

        fig = plot.plot_report(report)
        fig.savefig(out / "report.png", dpi=80)
        fig = plot.plot_fields(ens.isel(realization=slice(0, 4), time=slice(0, frames)))
        fig.savefig(out / "ensemble.png", dpi=80)
        files += ["report.png", "ensemble.png"]
    except ImportError:  # matplotlib is an optional extra
        summary["figures"] = "skipped: install xdiffusion[plot] for figures"
    summary["files"] = files
    summary["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
